import bench


def test_public_api_is_pinned():
    assert sorted(bench.__all__) == sorted(["__version__", "LengthDist", "RequestRecord", "RunSpec", "SLO", "load_run",
                                            "parse_slos", "summarize"])
    for name in bench.__all__:
        assert hasattr(bench, name)
