"""Training parameters are declared once (`TrainParams`); the API form, the command's
options, the console's form and the docs' table are all made from that declaration."""

import argparse

from app.training.params import TrainParams, markdown_table

FIELDS = set(TrainParams.model_fields)


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise AssertionError(f"no subcommand {name}")


def test_the_command_offers_every_parameter_with_its_description():
    from app.client.cli import build_parser

    for command in ("finetune", "train"):
        options = {
            a.dest: a for a in _subparser(build_parser(), command)._actions if a.dest in FIELDS
        }
        assert set(options) == FIELDS, command
        for name, action in options.items():
            assert (TrainParams.model_fields[name].description or "").split(";")[0][:20] in (
                action.help or ""
            )


def test_the_api_form_has_every_parameter_with_its_range_and_words(client):
    form = client.get("/openapi.json").json()["components"]["schemas"][
        "Body_create_job_finetune_post"
    ]["properties"]
    assert set(form) >= FIELDS
    # Given or left out, never null: each field is typed as its value.
    epochs = form["epochs"]
    assert (epochs["type"], epochs["minimum"], epochs["maximum"]) == ("integer", 1, 500)
    assert form["fine_tune_learning_rate"]["type"] == "number"
    assert form["flip"]["enum"] == ["none", "horizontal", "vertical", "horizontal_and_vertical"]
    for name in FIELDS:
        assert form[name]["description"] == TrainParams.model_fields[name].description


def test_an_out_of_range_form_field_is_refused_before_a_job(client):
    r = client.post("/finetune", data={"dataset_name": "nothing", "epochs": "0"})
    assert r.status_code == 422
    assert "epochs" in r.json()["detail"]


def test_the_console_form_and_the_docs_table_list_every_parameter():
    from app.console.routes import train_fields

    assert {f["name"] for f in train_fields()} == FIELDS - {"base"}  # base: with the model
    rows = [line for line in markdown_table().splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == list(TrainParams.model_fields)
