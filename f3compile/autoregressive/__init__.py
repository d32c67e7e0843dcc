"""Autoregressive models (CogVideo stage 1) through the same verbs as the denoisers.

Instead of `denoise`, such a model is compiled into a *step program*: `prefill(tokens) → (logits,
*caches)` and `decode_step(token, position, *past) → (logits, *new)` with static-size key/value
caches as named I/O (`program`). Around it: the sampling loop (`sampling`), calibration on that
loop (`calibrate`), build directories with a manifest (`export`), their runtime (`runtime`) and the
dense-vs-pruned benchmark (`bench`).
"""
