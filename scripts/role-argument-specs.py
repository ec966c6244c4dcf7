"""Write each role's meta/argument_specs.yml from its defaults/main.yml (every setting, its type, the
comment above it as the description) and the entry points other roles and playbooks call
(ENTRIES); tts_cluster's and preflight's specs are written by hand. `--check` says which files are out of step and
exits 1 (tests/unit/test_role_specs.py runs it). Run from the repository root."""
import pathlib
import re
import sys

import yaml

class D(yaml.SafeDumper):
    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)
ENTRIES = {"redis": ["promote", "follow"], "nas": ["heal"], "nginx": ["upstream"], "pki": ["certificate"],
           "tts_app": ["install", "service", "venv"], "alert_receiver": ["run-playbook"]}
SHORT = {}
VENV_OPTS = {
  "tts_app_venv_dir": {"type": "str", "required": True, "description": "The virtualenv to install into."},
  "tts_app_venv_dist": {"type": "str", "required": True, "description": "The folder that keeps the wheel."},
  "tts_app_venv_extras": {"type": "list", "elements": "str", "required": True, "description": "The service's extras to install (e.g. [receiver])."},
  "tts_app_venv_requirements": {"type": "list", "elements": "str", "required": True, "description": "More pip requirements (e.g. ansible-core)."},
}
def parse_defaults(path):
    lines = path.read_text().splitlines()
    data = yaml.safe_load(path.read_text()) or {}
    desc = {}
    comment = []
    header, header_done = "", False
    block = None     # the first variable of the block this line is in (no blank line since it)
    for line in lines:
        if line.startswith("---"):
            continue
        if line.startswith("#"):
            comment.append(line.lstrip("# ").rstrip())
            continue
        m = re.match(r"^([a-z_][a-z0-9_]*):", line)
        if m:
            own = " ".join(c for c in comment if c)
            if not header_done:   # the file's opening comment is about the role, not this variable
                header, header_done, own = own, True, ""
            if own or block is None or not desc.get(block):
                block = m.group(1)
                desc[block] = own
            else:   # a variable under another's comment, in the same block: that comment is about both
                desc[m.group(1)] = f"With {block}: {desc[block]}"
            comment = []
        elif not line.strip():
            if not header_done:
                header = " ".join(comment); header_done = True
            comment = []
            block = None
    return data, desc, header
def typ(v):
    if isinstance(v, bool): return "bool"
    if isinstance(v, int): return "int"
    if isinstance(v, list): return "list"
    if isinstance(v, dict): return "dict"
    if isinstance(v, str) and "{{" not in v: return "str"
    return "raw"
def refs(role, fname, seen=None):
    seen = seen or set()
    p = pathlib.Path(f"roles/{role}/tasks/{fname}.yml")
    if not p.exists() or p in seen: return ""
    seen.add(p)
    text = p.read_text()
    for inc in re.findall(r"include_tasks: ([a-z_-]+)\.yml", text):
        text += refs(role, inc, seen)
    for tpl in re.findall(r"src: ([a-z0-9_.-]+\.j2)", text):
        t = pathlib.Path(f"roles/{role}/templates/{tpl}")
        if t.exists(): text += t.read_text()
    return text
CHECK = "--check" in sys.argv
stale = []
for role_dir in sorted(pathlib.Path("roles").iterdir()):
    role = role_dir.name
    if role in ("tts_cluster", "preflight"): continue
    d = role_dir / "defaults/main.yml"
    data, desc, header = parse_defaults(d)
    meta = yaml.safe_load((role_dir / "meta/main.yml").read_text())
    short = meta["galaxy_info"]["description"]
    specs = {}
    for entry in ["main"] + ENTRIES.get(role, []):
        text = refs(role, entry) if entry != "main" else None
        opts = {}
        for k, v in data.items():
            if entry != "main" and not re.search(r"\b%s\b" % k, text):
                continue
            o = {"type": typ(v)}
            o["description"] = desc.get(k) or "See defaults/main.yml."
            opts[k] = o
        spec = {"short_description": short if entry == "main" else f"{short}: tasks/{entry}.yml"}
        if entry == "main" and header:
            spec["description"] = header   # the opening comment of defaults/main.yml: the role, its shared inputs
        if entry == "main":
            main_opts = opts
        elif entry == "venv":
            opts = dict(VENV_OPTS, **opts)
        elif set(opts) <= set(main_opts):
            opts = main_opts   # the main entry's settings (an alias in the file)
        if opts: spec["options"] = opts
        specs[entry] = spec
    out = role_dir / "meta/argument_specs.yml"
    body = yaml.dump({"argument_specs": specs}, Dumper=D, sort_keys=False, width=110, allow_unicode=True, default_flow_style=False)
    body = body.replace("&id001", "&main_options").replace("*id001", "*main_options")
    assert "id002" not in body
    text = ("---\n# Generated by scripts/role-argument-specs.py from defaults/main.yml (the defaults live there);\n"
            "# entry points that use the main settings share them (main_options).\n" + body)
    if CHECK:
        if not out.exists() or out.read_text() != text:
            stale.append(str(out))
    else:
        out.write_text(text)
if stale:
    print("out of step with defaults/main.yml (run scripts/role-argument-specs.py):", *stale, sep="\n  ")
    sys.exit(1)
