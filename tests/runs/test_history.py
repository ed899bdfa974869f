from camodet.runs import history


def test_a_record_after_a_torn_line_is_kept(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    history.append(path, {"type": "epoch", "epoch": 1})
    with open(path, "a") as fh:
        fh.write('{"type": "epoch", "epo')  # a crash mid-write
    history.append(path, {"type": "stage", "epoch": 2})
    history.append(path, {"type": "epoch", "epoch": 2})
    assert history.read(path) == [
        {"type": "epoch", "epoch": 1},
        {"type": "stage", "epoch": 2},
        {"type": "epoch", "epoch": 2},
    ]
