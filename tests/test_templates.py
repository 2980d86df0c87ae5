"""Templates and project instructions (contract section 15), against a real server.

User templates come from `KODE_CONFIG_DIR/templates`, workspace ones from a folder's
`.kode/templates`; broken files are reported, edits are picked up and announced with
`templates/changed`, and an agent keeps the template it was created from. A workDir's
`AGENTS.md` reaches the model (checked with a fake OpenAI-compatible server).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from kode_rpc.runtime.instructions import truncate

from .conftest import Spawn, scripted
from .fakes import FakeServer
from .test_checkpoints import openai_reply


def by_id(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for t in result["templates"]}


async def test_user_workspace_and_broken_templates(spawn: Spawn, server_env: dict[str, str], tmp_path: Path,
                                                   work_dir: Path) -> None:
    user = Path(server_env["KODE_CONFIG_DIR"]) / "templates"
    user.mkdir(parents=True)
    (user / "mine.toml").write_text('id = "mine"\nversion = 3\ndescription = "user one"\nmaxSteps = 7\n'
                                    'systemPrompt = "You are mine."\ntools = ["fs_read"]\n')
    (user / "auto.toml").write_text('id = "auto"\nversion = "9"\ndescription = "my auto"\n')
    (user / "bad.toml").write_text("id = [unclosed\n")
    (user / "noid.toml").write_text('description = "no id"\n')
    (user / "typed.toml").write_text('id = "typed"\nmaxSteps = "many"\n')
    ws = work_dir / ".kode" / "templates"
    ws.mkdir(parents=True)
    (ws / "proj.toml").write_text('id = "proj"\ndescription = "workspace one"\n[permission]\nmode = "auto"\n')
    (ws / "mine.toml").write_text('id = "mine"\nversion = "ws"\ndescription = "workspace wins"\n')
    c = await spawn(workspaceFolders=[str(work_dir)])
    res = await c.request("templates/list")
    t = by_id(res)
    assert t["default"]["source"] == "builtin" and "path" not in t["default"]
    assert t["auto"] == {"id": "auto", "version": "9", "description": "my auto", "source": "user",
                         "path": str(user / "auto.toml")}
    assert t["proj"]["source"] == "workspace" and t["proj"]["path"] == str(ws / "proj.toml")
    assert t["mine"]["version"] == "ws" and t["mine"]["source"] == "workspace", "workspace wins over user"
    assert len(res["templates"]) == len(t), "one entry per id"
    errors = {Path(e["path"]).name: e["message"] for e in res["errors"]}
    assert set(errors) == {"bad.toml", "noid.toml", "typed.toml"}, errors
    assert "TOML" in errors["bad.toml"] and "id" in errors["noid.toml"] and "maxSteps" in errors["typed.toml"]
    assert all(Path(e["path"]).is_absolute() for e in res["errors"])

    info = await c.request("agent/create", {"agentId": "p", "templateId": "proj"})
    assert info["templateId"] == "proj" and info["workDir"] == str(work_dir)
    status = await c.request("agent/status", {"agentId": "p"})
    assert status["agentId"] == "p"
    # A workDir that is not a workspace folder: its templates serve its agents, unlisted.
    other = tmp_path / "other"
    (other / ".kode" / "templates").mkdir(parents=True)
    (other / ".kode" / "templates" / "local.toml").write_text('id = "local"\n')
    await c.request("agent/create", {"agentId": "l", "templateId": "local", "sandbox": {"workDir": str(other)}})
    assert "local" not in by_id(await c.request("templates/list"))


async def test_template_fields_apply_and_stick_after_an_edit(spawn: Spawn, server_env: dict[str, str],
                                                            work_dir: Path) -> None:
    user = Path(server_env["KODE_CONFIG_DIR"]) / "templates"
    user.mkdir(parents=True)
    step = {"toolCalls": [{"name": "fs_read", "input": {"path": "nope.txt"}}]}
    script = scripted(step, step, step, step, step)
    path = user / "short.toml"
    path.write_text('id = "short"\nmaxSteps = 2\n[permission]\nmode = "auto"\n')
    c = await spawn(workspaceFolders=[str(work_dir)])
    await c.request("agent/create", {"agentId": "a", "templateId": "short", "model": script})
    path.write_text('id = "short"\nmaxSteps = 4\n[permission]\nmode = "auto"\n')
    changed = await c.wait_for(lambda: [n for n in c.notifications if n["method"] == "templates/changed"], 10)
    assert by_id(changed[0]["params"])["short"]["source"] == "user"
    await c.request("agent/create", {"agentId": "b", "templateId": "short", "model": script})
    ra = await c.request("agent/complete", {"agentId": "a", "text": "go"})
    rb = await c.request("agent/complete", {"agentId": "b", "text": "go"})
    da = c.events_of("a", "done")[-1]["event"]
    db = c.events_of("b", "done")[-1]["event"]
    # `done.step` is the step the limit stopped: maxSteps + 1 (a's 2 from before the edit, b's 4)
    assert da["reason"] == "max_steps" and da["step"] == 3, da
    assert db["reason"] == "max_steps" and db["step"] == 5, db
    assert ra["status"] and rb["status"]


async def test_hot_reload_sends_templates_changed(spawn: Spawn, server_env: dict[str, str], work_dir: Path) -> None:
    c = await spawn(workspaceFolders=[str(work_dir)])
    await c.request("templates/list")
    await asyncio.sleep(0.3)
    ws = work_dir / ".kode" / "templates"
    ws.mkdir(parents=True)  # the directory appears after the server started
    (ws / "fresh.toml").write_text('id = "fresh"\ndescription = "new"\n')
    loop = asyncio.get_running_loop()
    started = loop.time()
    note = await c.wait_for(lambda: next((n for n in c.notifications if n["method"] == "templates/changed"), None), 10)
    assert "fresh" in by_id(note["params"]) and note["params"]["errors"] == []
    assert loop.time() - started < 3, "picked up within about a second"
    (ws / "fresh.toml").write_text("not toml = = =\n")
    note = await c.wait_for(lambda: [n for n in c.notifications if n["method"] == "templates/changed"][1:], 10)
    assert "fresh" not in by_id(note[0]["params"]) and note[0]["params"]["errors"][0]["path"] == str(ws / "fresh.toml")
    assert "fresh" not in by_id(await c.request("templates/list"))


def test_truncate_cuts_at_a_whole_line() -> None:
    data = b"".join(b"line %05d\n" % i for i in range(10000))  # 100,000 bytes
    text = truncate("AGENTS.md", data)
    body, marker = text.rsplit("\n", 1)
    assert marker.startswith("[AGENTS.md truncated: ") and marker.endswith(f" of {len(data)} bytes]")
    kept = int(marker.split()[2])
    assert kept <= 64 * 1024 and kept % 11 == 0 and body.encode() + b"\n" == data[:kept]
    assert truncate("AGENTS.md", b"short\n") == "short\n"


async def test_agents_md_reaches_the_model_and_is_reread(spawn: Spawn, fake: FakeServer, work_dir: Path,
                                                         server_env: dict[str, str]) -> None:
    fake.add(*(openai_reply(f"answer {i}") for i in range(4)))
    c = await spawn(env=dict(server_env, TEST_OPENAI_KEY="sk-test"))
    model = {"provider": "openai", "model": "m", "baseUrl": fake.url + "/v1", "apiKeyEnv": "TEST_OPENAI_KEY",
             "retry": {"maxRetries": 0}}
    (work_dir / "KODE.md").write_text("Use tabs, from KODE.md.\n")
    await c.request("agent/create", {"agentId": "m", "model": model, "sandbox": {"workDir": str(work_dir)}})

    def system(i: int) -> str:
        msgs = fake.requests[i].json["messages"]
        return "".join(m["content"] for m in msgs if m["role"] == "system")

    await c.request("agent/complete", {"agentId": "m", "text": "one"})
    assert "Use tabs, from KODE.md." in system(0)
    (work_dir / "AGENTS.md").write_text("Always answer in French.\n")  # AGENTS.md wins over KODE.md
    await c.request("agent/complete", {"agentId": "m", "text": "two"})
    assert "Always answer in French." in system(1) and "KODE.md." not in system(1)
    big = "".join(f"rule {i:06d}\n" for i in range(7000))  # 84,000 bytes
    (work_dir / "AGENTS.md").write_text(big)
    await c.request("agent/complete", {"agentId": "m", "text": "three"})
    s = system(2)
    assert "rule 000000" in s and "rule 006999" not in s and f"of {len(big)} bytes]" in s
    assert "[AGENTS.md truncated: " in s
    (work_dir / "AGENTS.md").unlink()
    (work_dir / "KODE.md").unlink()
    await c.request("agent/complete", {"agentId": "m", "text": "four"})
    assert "rule" not in system(3) and "tabs" not in system(3)
