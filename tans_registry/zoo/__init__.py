"""The model zoo: OFA supernets trained per meta-training group, subnets cut out and measured.

Stage: :func:`tans_registry.zoo.build.build_zoo` (:class:`~.config.ZooConfig` ->
:class:`~.config.ZooBuildRecord`); :func:`~.store.list_zoo` lists it. Modules: ``config`` (configs and
records, no torch), ``profiles`` (quick/bench and the training recipe), ``space`` (the OFA space),
``train`` (supernet training), ``measure``, ``build`` (the stage), ``workers`` (parallel groups),
``store`` (a group's artifacts), ``meta`` (the zoo as the encoders' meta-dataset, snapshots).
"""
