"""The `tensorforge` package itself (pyproject.toml maps this folder to `tensorforge`, and compiler/, frontends/ and
runtime/ to `tensorforge.compiler`, `tensorforge.frontends` and `tensorforge.runtime`)."""
