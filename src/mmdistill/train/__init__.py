"""The Lightning engine: fitting and evaluating one model.

    fit.py        `train_stage`: a Trainer with early stopping on dev, the best weights restored,
                  dev and test evaluated (every stage of a run that trains goes through it)
    module.py     the LightningModule: one training step for every stage, the objective decides
    teachers.py   where a KD step's teacher outputs come from: live, cached or precomputed
    recorder.py   per-epoch metrics.csv rows and the best-on-dev checkpoint
    warmup.py     backbone warm-up, then fine-tuning of the last N layers (callback)
    optim.py      optimizer and schedule, with an optional backbone parameter group

What a run does with it, stage by stage, is `mmdistill/run/`.
"""
