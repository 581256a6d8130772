"""A run: what `mmdistill run` does, as a short list of stages writing one run directory.

    experiment.py   `run_experiment`: check, prepare the directory, run the stages in order
    stages/         teacher, student, baseline, report, compress: one module each, saying
                    what it reads and what it writes
    context.py      what the stages share (config, data, directory, metrics log, results)
    directory.py    the run directory's layout, and the one process that writes it
    extract.py      `mmdistill extract`: the teacher's embeddings of every split (seed 003)

Training one model is `mmdistill/train/`; what is kept between runs is `mmdistill/cache/`.
"""
