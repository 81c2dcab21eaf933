"""Condition schemas from cards, encoding, CFG dropout and prompt templates (hand-computed values)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from synthfm.data.manifest import load_card
from synthfm.errors import SynthfmError
from synthfm.pretrain.diffusion import drop_conditions
from synthfm.synth.diffusion.conditions import (
    ConditionSchema,
    card_conditions,
    compile_template,
    merge_schemas,
    render_prompt,
    schema_from_card,
)
from synthfm.synth.diffusion.config import DEFAULT_TEMPLATE

EDGES = (0.0, 40.0, 70.0, 120.0)


def test_schema_from_card_fields_and_encoding(make_card) -> None:
    """Tasks and mapped metadata become fields: grade (3 classes), age bands, sex; rows encode to 1-based indices."""
    data = load_card(make_card(8))
    schema = schema_from_card(data, EDGES, 64)
    assert schema.names == ["grade", "age", "sex"]
    assert schema.sizes == [3, 3, 2] and schema.get("age").values == ("0-40", "40-70", "70-120")
    cond = card_conditions(schema, data)
    # rows: grade i % 3, age 30 + i (all < 40), sex F F M M F F M M
    assert cond.tolist() == [[1 + i % 3, 1, 1 + (i % 4 >= 2)] for i in range(8)]
    assert schema.encode({"grade": "severe", "age": 71.5, "sex": "female"}).tolist() == [3, 3, 1]
    assert schema.encode({"grade": 1}).tolist() == [2, 0, 0]  # a class index; missing fields are 0
    assert schema.decode(np.array([3, 2, 0])) == {"grade": "severe", "age": "40-70", "sex": None}
    assert ConditionSchema.from_dict(schema.to_dict()) == schema
    with pytest.raises(SynthfmError, match=r"'grade'='extreme' is not one this generator knows"):
        schema.encode({"grade": "extreme"})
    with pytest.raises(SynthfmError, match="not one this generator was trained on"):
        schema.encode({"device": "topcon"})


def test_multilabel_and_many_valued_metadata(make_card) -> None:
    """A multilabel task gives one 0/1 field per class column; a metadata column with too many values is refused
    unless the fields are chosen; merging sources unions metadata values."""
    def rows(df: pd.DataFrame) -> pd.DataFrame:
        return df.assign(dr=[i % 2 for i in range(len(df))], amd=[1] * len(df), site=[f"s{i}" for i in range(len(df))])

    card = {"tasks": [{"name": "findings", "type": "multilabel", "classes": ["dr", "amd"]}],
            "metadata": {"patient_id": "patient", "site": "site"}}
    data = load_card(make_card(6, card=card, rows=rows))
    with pytest.raises(SynthfmError, match=r"metadata 'site' .* has 6 distinct values"):
        schema_from_card(data, EDGES, 4)
    schema = schema_from_card(data, EDGES, 8)
    assert schema.names == ["dr", "amd", "site"] and schema.sizes == [2, 2, 6]
    assert card_conditions(schema.select(["dr", "amd"]), data)[:, 0].tolist() == [1, 2, 1, 2, 1, 2]
    other = schema_from_card(load_card(make_card(6, card=card, rows=lambda d: rows(d).assign(site="zz"),
                                                 name="other")), EDGES, 8)
    assert merge_schemas([schema, other], "x").get("site").values == ("s0", "s1", "s2", "s3", "s4", "s5", "zz")


def test_condition_dropout_from_uniforms() -> None:
    """Whole vectors drop where u0 < p_all, single fields where u_j < p_field."""
    cond = torch.tensor([[2, 3], [1, 1], [2, 2]])
    u = torch.tensor([[0.05, 0.9, 0.9], [0.5, 0.1, 0.9], [0.5, 0.9, 0.9]])
    assert drop_conditions(cond, u, 0.1, 0.2).tolist() == [[0, 0], [0, 1], [2, 2]]
    assert drop_conditions(cond, u, 0.0, 0.0).tolist() == cond.tolist()


def test_prompt_template_renders_given_fields_only() -> None:
    """The default template names the modality and each given field; the null condition is the bare prefix."""
    t = compile_template(DEFAULT_TEMPLATE)
    assert render_prompt(t, "fundus", {"dr_grade": "3", "sex": "F", "age": None}) == \
        "a fundus image, dr grade 3, sex F"
    assert render_prompt(t, "fundus", {"dr_grade": None}) == "a fundus image"
    custom = compile_template("{{ modality }} photo{% if conditions.cataract == 'yes' %} with cataract{% endif %}")
    assert render_prompt(custom, "fundus", {"cataract": "yes"}) == "fundus photo with cataract"
    with pytest.raises(SynthfmError, match="does not parse"):
        compile_template("{% if %}")


def test_cli_app_has_train_and_generate(tmp_path) -> None:
    """`synthfm synth` offers train (pretrain's command, mounted by cli) and generate; training a non-diffusion
    config is a clear error."""
    from typer.testing import CliRunner

    from synthfm.cli import app
    from synthfm.pretrain.commands import train_command

    result = CliRunner().invoke(app, ["synth", "--help"])
    assert result.exit_code == 0 and "train" in result.output and "generate" in result.output
    (tmp_path / "mae.yaml").write_text("objective: mae\nstages: [{name: a, sources: [{source: rasd}], steps: 1}]\n")
    with pytest.raises(SynthfmError, match="not 'diffusion'"):
        train_command(tmp_path / "mae.yaml", tmp_path / "run")


def test_a_task_name_selects_and_encodes_its_label_column_field() -> None:
    """A card task 'pneumonia' stored in column 'label' is conditioned on as 'pneumonia' (its field is 'label')."""
    from synthfm.synth.diffusion.conditions import CondField

    task = {"name": "pneumonia", "type": "binary", "classes": ["normal", "pneumonia"], "columns": ["label"]}
    schema = ConditionSchema([CondField("label", "task", ("normal", "pneumonia")),
                              CondField("sex", "metadata", ("F", "M"))], [task], {"sex": "sex"})
    chosen = schema.select(["pneumonia"])
    assert chosen.names == ["label"] and chosen.tasks == [task]
    assert schema.encode({"pneumonia": "pneumonia", "sex": "M"}).tolist() == [2, 2]
    assert schema.get("pneumonia") is schema.get("label")
    with pytest.raises(SynthfmError, match=r"condition 'grade' is not one .*tasks \['pneumonia'\]"):
        schema.select(["grade"])
