"""The Experiment workflow's steps: prepare-data -> train | (prepare-data, create-study) ->
hpo-worker x N | train-candidate x N -> select -> export-onnx -> register.

Each task of an Experiment's workflow (``kiln.controller.render._experiment``) runs one of these
in its own process (a pod on Argo). They share one folder per experiment and one run folder per
spec hash. A run is of a spec *and* a dataset version: when prepare-data resolves another version
than the run folder was made for (``version: latest`` moved, the retraining trigger), the old run
is moved aside to ``runs/<spec hash>-<old version id[:8]>`` and the new one starts empty, so its
trials, selection and registration are never the old data's::

    .kiln/workspaces/<ws>/experiments/<name>/
        data/<version id>/          prepare-data: the dataset version's files (read-only copies)
        runs/<spec hash>/
            data.json               which dataset version this run trains on
            study.db                Optuna RDB storage (SQLite) shared by the parallel hpo-workers
            study.lock              serialises "may another trial start?" + ask() across workers
            trials/<id>/            one per trial: t0003 (HPO), run (run mode), p1 (parameter
                                    set 1), c-<candidate>[-t002] (AutoML)
                trial.json          {"id", "number", "candidate", "algorithm" | "command",
                                     "params", "state": RUNNING|COMPLETE|PRUNED|FAIL|SKIPPED|STOPPED (automl: not started,
                                     budget spent | killed fitting when it ran out; any mode:
                                     SIGTERM, e.g. `kiln stop --job`), "metrics",
                                     "objective", "steps", "epoch", "epochs" (of the last
                                     report; epochs: None where unknown), "error", "framework",
                                     "started", "finished"}
                metrics.jsonl       one line per report: {"step", "time", <metric>: value, ...}
                tensorboard/        event files (``tensorboard --logdir .../trials``)
                checkpoints/        epoch-NNNN.pt (built-ins) or the script's own; a killed trial
                                    resumes from the newest one
                model/              the trained model (Algorithm.save, or the script's output)
                trial.lock          held while the trial trains (an orphan of a killed run and its
                                    retry never train into the same folder at once)
            automl-start.json       automl with timeBudget: when the first candidate started
            selected.json           select: best trial + leaderboard + failed (automl candidates
                                    without a model, with why)
            eval.json               select: the selected model's validation labels and class
                                    scores (built-in classifiers only; ``kiln report``'s curves):
                                    {"split", "classes", "y_true": [class index, ...],
                                     "scores": [[per-class score, ...], ...], "kind": "probability"
                                     | "decision", "items", "truncated"} (the first items only
                                    when items x classes > EVAL_MAX_VALUES)
            onnx.json               export-onnx: parity report
            registered.json         register: model name, version, aliases, deleted versions
            summary.json            what the handler mirrors into the record's ``extra``

The results of the latest run are also written, git-tracked, into the user's repository (select
writes it, register adds the model version) so that a pull request carries them and ``kiln
report --base REF`` can compare with ``git show REF:metrics/<ws>/<name>.json``, like DVC's
metrics files (``.kiln/`` is not in git)::

    metrics/<ws>/<name>.json
        {"experiment": "<ws>/<name>", "specHash": "...", "mode": "run" | "hpo" | "automl",
         "dataset": {"name": "<ws>/<dataset>", "number": "v2", "version": "<md5>"},
         "objective": {"metric": "validation_accuracy", "direction": "maximize", "value": 0.97},
         "best": {"trial": "t0003", "algorithm": "svm", "candidate": null, "params": {...}},
         "metrics": {<objective, additionalMetrics, validation_* and test_* of the best trial>},
         "trials": {"COMPLETE": 5, "PRUNED": 1}, "registered": {"model": "m", "version": 3} | null}

Errors a user can fix (unknown metric, bad hyperparameters, a dataset not versioned yet, every
trial failing) are ``KilnError``s: ``kiln step`` exits 4 for them and the workflow does not retry.
Progress lines go to stderr, which is the task's log (``kiln logs Experiment/NAME``); stdout is
the step's one-line JSON output.

Modules, by stage (each step's module imports only what that step needs; ``controller.steps``
names them as lazy ``module:function`` strings)::

    home        paths, locks, the task log, ``write_json`` (no ML library)
    prepare     prepare-data step            data        load_train_data (TrainData)
    trial       Trial record, Reporter, checkpoints
    training    run_trial, the train step    command     training by the user's command
    hpo         Optuna study, create-study and hpo-worker steps
    automl      train-candidate step         evaluation  eval.json (validation scores)
    results     leaderboard, summary, results file
    selection   select step                  export      export-onnx step, packaging
    register    register step
"""
