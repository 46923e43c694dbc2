import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn

import vla_core.checkpoint as ckpt
from vla_core import CheckpointError, apply_name_mapping, load_checkpoint, load_into, load_tensors, save_safetensors


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_save_load_round_trip(tmp_path):
    m = model()
    save_safetensors(m.state_dict(), tmp_path / "m.safetensors")
    other = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    report = load_checkpoint(other, tmp_path / "m.safetensors")
    assert report.ok
    for a, b in zip(m.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)


def test_shared_tensors_are_saved(tmp_path):
    w = torch.randn(2, 2)
    save_safetensors({"a": w, "b": w}, tmp_path / "s.safetensors")
    data = load_file(tmp_path / "s.safetensors")
    assert torch.equal(data["a"], data["b"])


def test_failed_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_safetensors({"w": torch.ones(3)}, path)

    def exploding_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        save_safetensors({"w": torch.zeros(3)}, path)
    assert torch.equal(load_file(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"], "temp file left behind"


def test_strict_load_reports_and_changes_nothing():
    m = model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    bad = {"0.weight": torch.zeros(5, 3), "0.bias": torch.zeros(4), "extra": torch.zeros(1)}
    with pytest.raises(CheckpointError) as err:
        load_into(m, bad)
    text = str(err.value)
    assert "missing from the checkpoint (2): 2.bias, 2.weight" in text
    assert "unexpected in the checkpoint (1): extra" in text
    assert "shape mismatch '0.weight': model (4, 3), checkpoint (5, 3)" in text
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_non_strict_load_loads_what_matches():
    m = model()
    report = load_into(m, {"0.bias": torch.full((4,), 7.0), "0.weight": torch.zeros(9, 9)}, strict=False)
    assert not report.ok and report.missing and report.mismatched[0][0] == "0.weight"
    assert torch.equal(m[0].bias, torch.full((4,), 7.0))


def test_pickle_is_refused_unless_allowed(tmp_path):
    path = tmp_path / "m.bin"
    torch.save(model().state_dict(), path)
    with pytest.raises(CheckpointError, match="pickle file.*allow_pickle=True"):
        load_tensors(path)
    tensors = load_tensors(path, allow_pickle=True)
    assert set(tensors) == set(model().state_dict())


def test_pickle_with_objects_is_refused_even_when_allowed(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(1), "obj": object()}, path)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_tensors(path, allow_pickle=True)


def test_name_mapping_uses_whole_components_and_longest_prefix():
    t = {"model.backbone.x": torch.zeros(1), "model.backbone_extra.y": torch.ones(1), "model.head.z": torch.ones(2)}
    out = apply_name_mapping(t, {"backbone": "model.backbone", "head": "model", "special": "model.head"})
    assert set(out) == {"backbone.x", "head.backbone_extra.y", "special.z"}


def test_name_mapping_collision_is_an_error():
    with pytest.raises(CheckpointError, match="onto 'a.x'"):
        apply_name_mapping({"p.x": torch.zeros(1), "q.x": torch.zeros(1)}, {"a": "p", "a.x": "q.x"})


names = st.lists(st.sampled_from(["enc", "dec", "layer", "0", "1", "w", "b"]), min_size=1, max_size=4).map(".".join)


@settings(max_examples=60, deadline=None)
@given(keys=st.sets(names, min_size=1, max_size=8), ours=st.sampled_from(["ours", "a.b"]), theirs=st.sampled_from(["theirs", "x.y.z"]))
def test_name_mapping_round_trip(keys, ours, theirs):
    ckpt_keys = {f"{theirs}.{k}": torch.tensor([float(i)]) for i, k in enumerate(sorted(keys))}
    mapped = apply_name_mapping(ckpt_keys, {ours: theirs})
    assert set(mapped) == {f"{ours}.{k}" for k in keys}
    back = apply_name_mapping(mapped, {theirs: ours})
    assert set(back) == set(ckpt_keys)
    assert all(torch.equal(back[k], v) for k, v in ckpt_keys.items())


def test_name_mapping_loads_into_a_module(tmp_path):
    m = model()
    save_safetensors({f"policy.net.{k}": v for k, v in m.state_dict().items()}, tmp_path / "c.safetensors")
    wrapper = nn.Module()
    wrapper.body = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert load_checkpoint(wrapper, tmp_path / "c.safetensors", name_mapping={"body": "policy.net"}).ok
    assert torch.equal(wrapper.body[2].weight, m[2].weight)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_tensors(tmp_path / "nope.safetensors")
    (tmp_path / "x.npz").write_bytes(b"")
    with pytest.raises(CheckpointError, match="unsupported checkpoint format"):
        load_tensors(tmp_path / "x.npz")
