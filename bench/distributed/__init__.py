"""`--strategy multi_worker` on Ray Train: the driver (`driver`: checks, launch, the one row), the
worker side (`worker`: what runs in each Ray Train worker), the Ray connection shared with the
sweeps (`ray_connection`) and a local multi-host cluster for tests and rehearsal (`localcluster`).

The top of `bench`: may import every package below it; nothing in `bench` imports it.
"""
