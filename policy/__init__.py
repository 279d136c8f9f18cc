"""Stage-2 policy model: Qwen2.5-VL + geometry compressor + DiT flow-matching head (entry: policy.build_policy)."""
