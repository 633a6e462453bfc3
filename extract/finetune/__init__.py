"""Backbone fine-tuning (`lta finetune-backbone`): verb/noun recognition training of a video backbone.

    model.py   BackboneSpec, the recognition model, optimiser groups and schedule, the run-dir export
               (backbone.pt + backbone.json) that `lta extract weights=RUN_DIR` loads
    data.py    recognition samples, clip probing, the epoch batch sampler and DataLoader
    options.py TrainOptions, the arguments of `finetune` (torch-free; `lta finetune-backbone`'s schema inherits it),
               and the run dir's layout (what marks a run, what overwrite=true removes)
    train.py   the DDP training loop (`finetune(TrainOptions)` = `train_prepared(prepare(opts))`), validation
    checkpoint.py  the resumable training checkpoint (checkpoints/last.pt + per-rank RNG states)

Weight fetching and strict state-dict loading live in extract/weights.py, shared with the extractors;
importing this package imports nothing heavy.
"""
