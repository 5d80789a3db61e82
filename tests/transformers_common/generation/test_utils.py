"""Stand-in: the sdist of transformers does not ship `tests/generation/test_utils.py`. `generate` is tested in
`tests/test_generation.py`; the common tester declares no generative classes, so this mixin is never mixed in."""


class GenerationTesterMixin:
    pass
