"""Stand-in: the sdist of transformers does not ship `tests/exporters/test_export.py`; no export test runs."""


class ExportTesterMixin:
    pass
