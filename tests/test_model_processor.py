"""The tiny tokenizer/processor: built offline, deterministic, prompt format, pickling, save/load round trip."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from geo3d.core.config import PACKAGE_ROOT
from geo3d.policy.configuration_policy import TinyVLMConfig
from geo3d.policy.processor_policy import VLMInputs
from geo3d.policy.tiny_qwen import build_tokenizer


@pytest.fixture(scope="module")
def processor(tiny_vlm_dir) -> VLMInputs:
    return VLMInputs.from_dir(tiny_vlm_dir)


def images(b: int = 2, v: int = 2, size: int = 224, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (b, v, size, size, 3), dtype=np.uint8)


def test_prompt_is_one_user_turn_images_then_instruction(processor):
    text = processor.prompt("put the bowl on the plate", 2)
    image = "<|vision_start|><|image_pad|><|vision_end|>"
    assert text.endswith(f"<|im_start|>user\n{image}{image}put the bowl on the plate<|im_end|>\n"
                         "<|im_start|>assistant\n")


def test_batch_is_left_padded_with_64_visual_tokens_per_224_image(processor):
    out = processor(images(), ["open the drawer", "pick up the black bowl and place it in the basket"])
    assert set(out) >= {"input_ids", "attention_mask", "pixel_values", "image_grid_thw"}
    mask = out["attention_mask"]
    assert mask[0, 0] == 0 and mask[:, -1].all()  # shorter prompt padded on the left
    pad_id = processor.hf.image_token_id
    assert ((out["input_ids"] == pad_id).sum(dim=1) == 2 * 64).all()  # 224^2 -> 16x16 patches -> 2x2 merge -> 64
    assert out["image_grid_thw"].tolist() == [[1, 16, 16]] * 4


def test_processor_pickles_for_dataloader_workers(processor):
    batch_images, texts = images(seed=1), ["turn on the stove", "open the microwave"]
    clone = pickle.loads(pickle.dumps(processor))
    a, b = processor(batch_images, texts), clone(batch_images, texts)
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_bad_images_are_refused(processor):
    with pytest.raises(ValueError, match="uint8"):
        processor(images().astype(np.float32), ["a", "b"])
    with pytest.raises(ValueError, match="instructions"):
        processor(images(), ["only one"])


def test_tokenizer_training_is_deterministic():
    a, b = build_tokenizer(TinyVLMConfig()), build_tokenizer(TinyVLMConfig())
    assert a.get_vocab() == b.get_vocab()
    text = "pick up the alphabet soup and place it in the basket"
    assert a(text).input_ids == b(text).input_ids
    assert a.decode(a(text).input_ids) == text


@pytest.mark.slow  # a fresh process with HF_HUB_OFFLINE=1 set before transformers is imported
def test_offline_save_and_load_round_trip(tmp_path):
    """A fresh process with HF_HUB_OFFLINE=1 builds the tiny dir, saves and reloads the processor, and gets the
    same model inputs (the cluster loads the 3B the same way: local_files_only, no hub)."""
    script = textwrap.dedent(f"""
        import numpy as np, torch
        from geo3d.policy.configuration_policy import TinyVLMConfig
        from geo3d.policy.processor_policy import VLMInputs
        from geo3d.policy.tiny_qwen import tiny_model_dir
        src = tiny_model_dir(TinyVLMConfig(), {str(tmp_path / 'cache')!r})
        first = VLMInputs.from_dir(src)
        first.hf.save_pretrained({str(tmp_path / 'saved')!r})
        second = VLMInputs.from_dir({str(tmp_path / 'saved')!r})
        imgs = np.random.default_rng(0).integers(0, 256, (2, 2, 56, 56, 3), dtype=np.uint8)
        texts = ["open the top drawer", "put the mug on the plate"]
        a, b = first(imgs, texts), second(imgs, texts)
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
        assert type(second.hf.image_processor).__name__ == "Qwen2VLImageProcessorPil"
        print("ROUNDTRIP_OK", a["input_ids"].shape[1])
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    res = subprocess.run([sys.executable, "-c", script], cwd=PACKAGE_ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ROUNDTRIP_OK" in res.stdout
    assert (tmp_path / "saved" / "tokenizer.json").is_file()
