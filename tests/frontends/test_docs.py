from tensorforge.frontends.onnx import docs


def test_readme_lists_exactly_the_supported_ops():
    """README.md's op list is generated; regenerate it with `python -m tensorforge.frontends.onnx.docs --write`."""
    assert docs.section() in open(docs.README).read()
