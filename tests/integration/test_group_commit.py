"""Group commit: concurrent commands in one process share transactions, each judged alone."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal

from application.commands import Outcome, Redeem
from domain.errors import InsufficientPoints
from infrastructure.group_commit import CommitQueue
from test_ledger_story import START, Clock, open_ledger, purchase, set_up


def test_concurrent_commands_commit_together_and_each_gets_its_own_result(database_url: str) -> None:
    clock = Clock(START + timedelta(hours=1))
    ledger = open_ledger(database_url, clock)
    set_up(ledger, members=("ann", "bob"))
    ledger.execute(purchase("seed", "100", member_id="bob", at=START))  # bob: 200 points
    committer = CommitQueue(ledger)
    results: dict[str, object] = {}
    barrier = threading.Barrier(40)

    def post(name: str, command: object) -> None:
        barrier.wait()
        try:
            results[name] = committer.execute(command)  # type: ignore[arg-type]
        except Exception as error:  # noqa: BLE001 - asserted below
            results[name] = error

    commands = {f"p{i}": purchase(f"t-{i % 30}", "10", at=START) for i in range(34)}  # 4 repeats
    commands |= {f"r{i}": Redeem(actor="pos", member_id="bob", redemption_id=f"r-{i}", points=50) for i in range(6)}
    threads = [threading.Thread(target=post, args=item) for item in commands.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    committer.close()

    purchases = [results[f"p{i}"] for i in range(34)]
    assert all(isinstance(r, Outcome) for r in purchases)
    assert sum(not r.replayed for r in purchases) == 30  # type: ignore[union-attr]
    redemptions = [results[f"r{i}"] for i in range(6)]
    assert sum(isinstance(r, Outcome) for r in redemptions) == 4  # 200 points, 50 each
    assert sum(isinstance(r, InsufficientPoints) for r in redemptions) == 2
    assert committer.batches < committer.commands  # some commands shared a transaction
    ann, bob = ledger.get_member("ann"), ledger.get_member("bob")
    assert ann.lifetime["earned"] == 30 * 20 and len(ann.purchases) == 30
    assert bob.balance_at(clock.now)["available"] == 0
    assert Decimal(0) == sum((p["returned"] for p in ann.purchases.values()), Decimal(0))
    ledger.close()
