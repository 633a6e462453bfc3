"""Backbone fine-tuning (`lta finetune-backbone`): verb/noun recognition training of a video backbone.

    model.py   BackboneSpec, the recognition model, optimiser groups and schedule, the run-dir export
               (backbone.pt + backbone.json) that `lta extract weights=RUN_DIR` loads
    data.py    recognition samples, clip probing, the epoch batch sampler and DataLoader
    options.py TrainOptions, the arguments of `finetune` (torch-free; `lta finetune-backbone`'s schema inherits it)
    train.py   the DDP training loop (`finetune(TrainOptions)`), checkpoints, resume, validation

Weight fetching and strict state-dict loading live in extract/weights.py, shared with the extractors;
importing this package imports nothing heavy.
"""
