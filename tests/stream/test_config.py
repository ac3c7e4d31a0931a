"""The typed configuration: paper defaults, TOML round trip, overrides, one-line errors."""
import pytest

from btomo.stream.config import ConfigError, RunConfig, load_config, parse_shape, write_config


def test_defaults_are_the_papers():
    c = RunConfig()
    assert c.acquisition.shape == (1920, 1728)
    assert c.acquisition.pixel_size_A == 0.358
    assert c.acquisition.fps == 400.0
    assert c.acquisition.dose_e_per_A2 == 15.0
    assert c.microscope.voltage_kv == 300.0 and c.microscope.cs_um == -11.0
    assert c.microscope.defocus_A < 0  # slight overfocus: white atoms
    assert c.sample.lattice_A == 3.92
    assert 5 <= c.sample.etch_rate_atoms_s <= 9
    assert c.frames.box_px == 160 and c.frames.tracking_lowpass_A == 2.3
    assert c.windows.directions == 2500
    assert c.reconstruct.lowpass_A == 1.5 and c.reconstruct.directions == 2500 and c.reconstruct.rounds == 5
    assert c.analysis.cutoff_A == 3.41 and c.analysis.s6_threshold == 0.8
    RunConfig().validate()


def test_toml_round_trip(tmp_path):
    cfg = load_config(overrides={"acquisition.shape": "512x640", "sample.morphology": "truncated_octahedron",
                                 "simulate.save_clean": "true", "stream.queue_policy": "drop-oldest"})
    path = write_config(cfg, tmp_path / "run")
    assert path.name == "config.toml"
    again = load_config(path)
    assert again == cfg
    assert again.acquisition.shape == (512, 640) and again.simulate.save_clean is True


def test_file_then_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[acquisition]\nfps = 200.0\ndose_e_per_A2 = 10\n[sample]\nparticles = 3\n")
    cfg = load_config(p, {"acquisition.fps": 100})
    assert cfg.acquisition.fps == 100.0  # the flag wins over the file
    assert cfg.acquisition.dose_e_per_A2 == 10.0 and cfg.sample.particles == 3


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"acquisition.dose_e_per_A2": -1}, "acquisition.dose_e_per_A2 must be > 0, got -1.0"),
        ({"stream.protocol": "udp"}, "stream.protocol must be one of"),
        ({"frames.box_px": 600, "acquisition.shape": "512x512"}, "frames.box_px (600 px) is larger than the frame"),
        ({"sample.morphology": "cube"}, "sample.morphology must be one of"),
        ({"sample.diameter_nm": 12}, "sample.diameter_nm must be in [0.5, 6] nm"),
        ({"acquisition.fps": "nan"}, "acquisition.fps must be a finite number, got nan"),
        ({"acquisition.fps": "inf"}, "acquisition.fps must be a finite number, got inf"),
        ({"sample.liquid_thickness_nm": "inf"}, "sample.liquid_thickness_nm must be a finite number"),
        ({"microscope.cs_um": "-inf"}, "microscope.cs_um must be a finite number"),
        ({"acquisition.dose_e_per_A2": 1e9}, "uint16 counting frames need at most 1000"),
        ({"simulate.workers": 100000}, "simulate.workers must be in [0, 256]"),
        ({"simulate.frames": "many"}, "simulate.frames expects int, got 'many'"),
        ({"acquisition.shape": "512"}, "expected a frame shape as HxW"),
        ({"sample.colour": 1}, "unknown setting 'sample.colour'"),
        ({"nosuch.key": 1}, "unknown section 'nosuch'"),
        ({"stream.queue_policy": "drop-newest"}, "stream.queue_policy must be one of"),
        ({"jobs.seed_min_in_map": 1.5}, "jobs.seed_min_in_map must be 0 to 1"),
        ({"jobs.seed_max_resolution_A": 0}, "jobs.seed_max_resolution_A"),
    ],
)
def test_invalid_values_fail_with_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_toml_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[acquisition\nfps=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"[sample]\nmorphology = \"\xe9\"\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(latin)
    flat = tmp_path / "flat.toml"
    flat.write_text("fps = 3\n")
    with pytest.raises(ConfigError, match="must be a table"):
        load_config(flat)


def test_parse_shape():
    assert parse_shape("1920x1728") == (1920, 1728)
    with pytest.raises(ConfigError):
        parse_shape("axb")


def test_configuration_page_lists_every_setting_with_its_default():
    """docs/configuration.md (tools/config_doc.py) is up to date with the dataclasses."""
    import dataclasses
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    cfg = RunConfig()
    for f in dataclasses.fields(cfg):
        assert f"## [{f.name}]" in page
        section = getattr(cfg, f.name)
        for g in dataclasses.fields(section):
            value = getattr(section, g.name)
            shown = "x".join(map(str, value)) if isinstance(value, tuple) else repr(value)
            row = f"| `{g.name}` | `{shown}` | "
            assert row in page, f"{f.name}.{g.name} = {shown} missing: run python tools/config_doc.py"
            described = page.split(row, 1)[1].split("\n", 1)[0]
            assert len(described.strip(" |")) > 10, f"{f.name}.{g.name} has no description"
