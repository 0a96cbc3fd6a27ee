"""`finetune tune`: a hyper-parameter search with Optuna over one recipe ([docs/tune.md](../../docs/tune.md)).

`study.py` (the study: its SQLite storage, the TPE sampler and median pruner, how many trials and how long, then
best.yaml, trials.csv and study.png), `trial.py` (one trial: its values from the space, a normal run in
trial-K/ whose val loss is reported to the pruner each epoch), `figures.py` (study.png: parallel coordinates and
parameter importance). The space itself (the keys, their ranges, the default) is in `config.space`.
"""
