"""Turning checkpoints into rwkv.cpp models. Import the modules themselves; this package adds no
names of its own (``rwkvcpp.convert`` is :func:`rwkvcpp.conversion.pipeline.convert`).

Reading checkpoints, without torch and one tensor at a time:

* ``lazy``: LazyTensor / LazyCheckpoint, what every reader returns, and the error classes;
* ``pth``: ``torch.save`` files through a restricted unpickler; ``safetensors``: safetensors files;
* ``load``: ``load_checkpoint(path)``, which picks the reader from the content (and reads HF
  shard indexes and folders);
* ``hf``: Hugging Face RWKV layouts back to BlinkDL's names; ``fla``: flash-linear-attention's
  RWKV-7 layout (fla-hub), which ``hf`` hands to it;
* ``state_file`` and ``pth_write``: state-tuning files, read and written.

Converting, with what each RWKV version does in :mod:`rwkvcpp.arch`:

* ``schema``: the check of a whole checkpoint against its version, and the one tensor order;
* ``transform``: checkpoint tensors to file records (a LoRA merge would run before it);
* ``pipeline``: ``convert(src, dst)`` and ``open_checkpoint``;
* ``gguf_file`` and ``gguf``: llama.cpp's GGUF container, and RWKV-6/7 GGUF files to and from
  ``.bin`` (their blocks copied byte for byte, not through checkpoints).

The ``.bin`` itself is written by :mod:`rwkvcpp.writer` and read by :mod:`rwkvcpp.format`.
"""
