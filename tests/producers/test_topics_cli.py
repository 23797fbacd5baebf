"""`invad topics`: what the Helm hook Job and the compose one-shot run before any worker starts (real Kafka)."""

from __future__ import annotations

import pytest

from producers.admin import delete_topic, describe_topic
from worker.cli import main


@pytest.fixture
def topics(kafka_bootstrap, topic, monkeypatch):
    """(bootstrap, topic, dlq topic), with the workers' variables cleared; both topics deleted afterwards."""
    for name in ("INVAD_KAFKA_BOOTSTRAP", "INVAD_TOPIC", "INVAD_DLQ_TOPIC"):
        monkeypatch.delenv(name, raising=False)
    yield kafka_bootstrap, topic, f"{topic}.dlq"
    for name in (topic, f"{topic}.dlq"):
        delete_topic(kafka_bootstrap, name)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["topics", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_ensure_creates_both_topics_once_from_the_workers_variables(topics, capsys, monkeypatch):
    bootstrap, topic, dlq = topics
    monkeypatch.setenv("INVAD_KAFKA_BOOTSTRAP", bootstrap)
    monkeypatch.setenv("INVAD_TOPIC", topic)
    code, out, _ = _run(capsys, "ensure", "--partitions", "3", "--dlq-partitions", "2")
    assert code == 0
    assert out.splitlines() == [f"topic {topic} created with 3 partition(s)",
                                f"topic {dlq} created with 2 partition(s)"]
    assert describe_topic(bootstrap, topic) == 3 and describe_topic(bootstrap, dlq) == 2
    code, out, _ = _run(capsys, "ensure", "--partitions", "2")  # fewer than exist: fine, left alone
    assert code == 0 and f"topic {topic} found with 3 partition(s)" in out
    code, out, _ = _run(capsys, "describe")
    assert code == 0
    assert out.splitlines() == [f"topic {topic} has 3 partition(s)", f"topic {dlq} has 2 partition(s)"]


def test_ensure_refuses_to_grow_a_topic_silently(topics, capsys):
    bootstrap, topic, _ = topics
    assert _run(capsys, "ensure", "--bootstrap", bootstrap, "--topic", topic, "--partitions", "1")[0] == 0
    code, _, err = _run(capsys, "ensure", "--bootstrap", bootstrap, "--topic", topic, "--partitions", "4")
    assert code == 1
    assert "already exists with 1 partitions" in err and "--partitions 1" in err
    assert describe_topic(bootstrap, topic) == 1


def test_describe_names_a_missing_topic(topics, capsys):
    bootstrap, topic, dlq = topics
    code, out, err = _run(capsys, "describe", "--bootstrap", bootstrap, "--topic", topic)
    assert code == 1
    assert f"topic {topic} missing" in out and f"missing {topic}, {dlq}" in err and "invad topics ensure" in err


@pytest.mark.parametrize("argv, shown", [
    (["ensure", "--partitions", "3"], "no Kafka broker given"),
    (["ensure", "--bootstrap", "kafka", "--partitions", "3"], "expected host:port"),
    (["ensure", "--bootstrap", "k:9092", "--topic", "a/b", "--partitions", "3"], "from --topic/INVAD_TOPIC"),
    (["ensure", "--bootstrap", "k:9092", "--topic", "t", "--dlq-topic", "t", "--partitions", "3"], "must differ"),
])
def test_bad_flags_exit_2_naming_the_fix(argv, shown, capsys, monkeypatch):
    monkeypatch.delenv("INVAD_KAFKA_BOOTSTRAP", raising=False)
    code, _, err = _run(capsys, *argv)
    assert code == 2 and shown in err


def test_partitions_are_required_and_positive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["topics", "ensure", "--bootstrap", "k:9092", "--partitions", "0"])
    assert exit_info.value.code == 2
    assert "'0' is not a positive integer" in capsys.readouterr().err
