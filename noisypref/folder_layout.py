"""The names of what a study folder holds -- its files, and the labels its plan.json and results.parquet
give runs without noise, runs without cleaning and references: the one definition that the
configuration, the study runner, the engine, tracking and the reports use. A leaf (it imports nothing):
the reports, which import neither torch nor noisypref.benchmark, and `noisypref status` use it too.

DIR/study.yaml              the resolved study (every default filled in)
DIR/plan.json               its runs (id, config, place in the grid), written with study.yaml: read by
                            `status` and `collect`, which thus need no plugin code
DIR/runs/<run_id>/          one folder per run
    .lock                   flock-ed by the process computing the run (released by the OS if it dies)
    config.json             the run config, written first
    metrics.jsonl           one line per logged training step
    checkpoint/             the mid-run checkpoint (training.checkpoint_every), removed once the run succeeds
    pairs.parquet, items.parquet    per-pair and per-item evaluation values
    flips.csv, cleaning.csv, heartbeat.json, stderr.log, ...    written by the engine and the scheduler
    run.log                 the run's log messages
    result.json             written last, atomically: the run is complete only when it exists
    failure.json            reason and traceback, when the run failed
DIR/results.parquet         one row per run (`noisypref collect`)
DIR/metrics.json            what each metric of the table means: direction, bounds, ...
DIR/superseded/<time>/      a previous study's study.yaml, results.parquet and run folders, moved by --force
"""

STUDY_FILE = "study.yaml"
PLAN_FILE = "plan.json"
RUNS_FOLDER = "runs"
RESULTS_TABLE = "results.parquet"
METRICS_FILE = "metrics.json"  # the declarations of the results' metrics (noisypref.benchmark.config.metrics)
SUPERSEDED_FOLDER = "superseded"  # DIR/superseded/<UTC time>/: what --force moved aside

# In each run folder
LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
METRICS_LOG_FILE = "metrics.jsonl"
CHECKPOINT_FOLDER = "checkpoint"
PAIRS_FILE = "pairs.parquet"
ITEMS_FILE = "items.parquet"
LOG_FILE = "run.log"
RESULT_FILE = "result.json"
FAILURE_FILE = "failure.json"

# Labels of runs, in plan.json, in results.parquet and in a run config's sections
NO_NOISE_LABEL = "none"  # the noise model shown for rate-0 runs, which stand for every noise model
NO_CLEANING = "none"  # the cleaning label of the runs that train on the noisy pairs as they are
NO_REFERENCE = "none"  # the reference kind of a competitor (noisypref.benchmark.config.references)
CLEAN_ONLY = "clean_only"  # the oracle reference: trained on the noisy pairs minus the flipped ones
KNOWN_RATE = "known_rate"  # a reference given its run's realised flip rate (or a cleaner told how many pairs flipped)
FLIP_RECORD_ORACLE = "oracle"  # a reference cleaned by the oracle judge otherwise than clean_only (flipping, a share)
