"""The history table, the recovery function and their permissions, alarms and dashboard, as synthesized."""

from __future__ import annotations

import json
from typing import Any

from tests.infra.test_template import _role_actions, _tables_of, by_type, function_id, refs, table_ids


def test_the_history_table_is_keyed_by_channel_and_offset_and_expires(fanout: dict[str, Any]) -> None:
    table = fanout["Resources"][table_ids(fanout)["history"]]["Properties"]
    assert table["KeySchema"] == [
        {"AttributeName": "channel", "KeyType": "HASH"},
        {"AttributeName": "offset", "KeyType": "RANGE"},
    ]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiresAt", "Enabled": True}
    assert "StreamSpecification" not in table and "GlobalSecondaryIndexes" not in table


def test_history_permissions_are_least_privilege(fanout: dict[str, Any]) -> None:
    def on_history(fn: str) -> set[str]:
        return {a for a, tables in _tables_of(fanout, fn).items() if "history" in tables}

    # appending is the operator API's and $default's (a client's publish; one transaction: Update,
    # Put, Delete); reading is also the history action's and recovery's
    read = {"dynamodb:GetItem", "dynamodb:Query"}
    append = {"dynamodb:UpdateItem", "dynamodb:PutItem", "dynamodb:DeleteItem"}
    assert on_history("fanout-operator-api") == read | append
    assert on_history("fanout-default") == read | append
    assert on_history("fanout-recovery") == read | {"dynamodb:ConditionCheckItem"}
    for fn in ("fanout-connect", "fanout-disconnect", "fanout-swarm", "fanout-query", "fanout-post"):
        assert not on_history(fn), fn
    recovery = _tables_of(fanout, "fanout-recovery")
    assert recovery["dynamodb:UpdateItem"] == {"subscriptions"}  # the hand-over: liveFrom on its row
    assert set(recovery) == {"dynamodb:GetItem", "dynamodb:Query", "dynamodb:ConditionCheckItem",
                             "dynamodb:UpdateItem"}  # fmt: skip
    actions = _role_actions(fanout, "fanout-recovery")
    assert "execute-api:ManageConnections" in actions and "sqs:SendMessage" in actions
    (target,) = _role_actions(fanout, "fanout-connect")["lambda:InvokeFunction"]
    assert refs(target) == {function_id(fanout, "fanout-recovery")}


def test_failed_recoveries_land_in_a_queue_and_page_someone(fanout: dict[str, Any]) -> None:
    recovery = function_id(fanout, "fanout-recovery")
    (config,) = [
        c["Properties"]
        for c in by_type(fanout, "AWS::Lambda::EventInvokeConfig").values()
        if c["Properties"]["FunctionName"] == {"Ref": recovery}
    ]
    assert config["MaximumRetryAttempts"] == 2
    (queue_id,) = refs(config["DestinationConfig"]["OnFailure"]["Destination"])
    assert fanout["Resources"][queue_id]["Properties"]["QueueName"] == "fanout-recovery-failures"
    alarms = {
        lid: a["Properties"]
        for lid, a in by_type(fanout, "AWS::CloudWatch::Alarm").items()
        if refs(a["Properties"].get("Dimensions", [])) == {queue_id}
    }
    assert any("RecoveriesFailed" in lid for lid in alarms)
    assert all(a["Threshold"] == 1 and a["AlarmActions"] for a in alarms.values())
    (dashboard,) = by_type(fanout, "AWS::CloudWatch::Dashboard").values()
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    assert "History and recovery" in body and "RecoveredMessages" in body and "RecoveriesImpossible" in body
    assert {"HistoryTable", "RecoveryFailuresQueueUrl"} <= set(fanout["Outputs"])
