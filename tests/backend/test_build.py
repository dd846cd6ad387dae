"""Building the kernel library: several compile jobs give the same library as one."""

import numpy as np
import pytest

from tensorforge import compile_model
from tensorforge.compiler.backend import build
from tensorforge.compiler.examples import light_input, light_path
from tensorforge.runtime.errors import CompileError


def test_parallel_build_links_every_kernel_and_matches_one_job(monkeypatch):
    import onnx

    model = onnx.load(light_path("squeezenet"))
    feeds = light_input(model)
    monkeypatch.setenv(build.BUILD_JOBS_ENV, "1")
    one = compile_model(model)
    monkeypatch.setenv(build.BUILD_JOBS_ENV, "3")
    jobs = []
    real = build.compile_library

    def spy(funcs, *args, **kwargs):
        jobs.append(build.build_jobs(len(funcs)))
        return real(funcs, *args, **kwargs)

    monkeypatch.setattr(build, "compile_library", spy)
    three = compile_model(model)
    assert jobs == [3]  # squeezenet has enough distinct kernels for three jobs
    assert three.num_kernels == one.num_kernels
    np.testing.assert_array_equal(three.run(feeds)[0], one.run(feeds)[0])


def test_few_kernels_build_in_one_job_and_a_bad_job_count_is_refused(monkeypatch):
    monkeypatch.delenv(build.BUILD_JOBS_ENV, raising=False)
    assert build.build_jobs(build.KERNELS_PER_JOB - 1) == 1
    monkeypatch.setenv(build.BUILD_JOBS_ENV, "zero")
    with pytest.raises(CompileError, match="TENSORFORGE_BUILD_JOBS"):
        build.build_jobs(100)
