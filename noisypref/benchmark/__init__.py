"""Everything between a study file and its result files, in rooms that import only downward.

    config/      the one typed run configuration: settings sections, run config, run id (the value
                 checks and the Section machinery are the leaves noisypref/checks.py and settings.py)
    data/        preference data in: loaders for the public layouts, the held-out split
    testbed/     the synthetic gold-reward testbed (language, gold reward, reference policy, pairs)
    engine/      tokenisation, packed log-probs, reference log-probs, models, the training loop
    evaluation/  metrics (declared once, with direction and bounds), generation, AlpacaEval, Arena-Hard
    run/         one run end to end, into its run folder
    study/       grids of runs from a YAML file: expansion, the output folder, scheduling, results
    storage.py   atomic writes, file locks and build-once caches (the one home of each)

docs/architecture.md draws the data flow and says where to add a method, a noise model, a metric,
a dataset layout or a benchmark.
"""
