"""`--strategy multi_worker` on Ray Train, or as plain processes with TF_CONFIG (`--launcher tf_config`).

- the driver (`driver`: checks, launch, signals, the one row; `aggregate`: that row from the workers'
  reports; `hosts`, `events`: the hosts seen from the driver, one line per event);
- the plain launcher (`plain`: K processes with TF_CONFIG on 127.0.0.1; `plain_worker`: one of them);
- the worker side (`worker`: what runs in each worker, under either launcher; `checkpoints`: TF's multi-worker
  checkpoint rule; `faults`: the testing-only fault injection; `scratch`: a worker's temporary folders);
- between them, the run's collector actor (`collector`);
- the Ray connection shared with the sweeps (`ray_connection`) and a local multi-host cluster for
  tests and rehearsal (`localcluster`).

The top of `bench`: may import every package below it; nothing in `bench` imports it.
"""
