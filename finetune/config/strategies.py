"""Which parameter groups each strategy trains: the one table (train.freeze builds the freeze plan from it,
plan_features finds the frozen part with it)."""

TRAINED_GROUPS = {"feature-extract": ("head",), "last-stage": ("head", "last_stage"),
                  "full": ("head", "last_stage", "backbone")}
