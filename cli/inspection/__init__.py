"""`geo3d inspect`: write exactly what the VLM and the geometry encoder receive for one frame (dataset or live
simulator), read back from the real model input tensors, so train and eval inputs can be put side by side."""
