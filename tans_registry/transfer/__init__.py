"""The transfer table: fine-tuned accuracy of zoo networks on tasks other than their own, kept as records.

Stage: :func:`tans_registry.transfer.stage.build_table` (:class:`~.config.TransferConfig` ->
:class:`~.config.TransferRecord`), `tans zoo transfer`. Modules: ``config`` (no torch), ``records`` (a record
as an MLflow run of `tans/transfer`, written and read back), ``stage`` (tasks, starts, fine-tuning). It sits
between fine-tuning (whose one-start job it runs) and encoder training (which learns from its records).
"""
