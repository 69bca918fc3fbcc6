"""`fertk info`: versions, devices and which backends can run here."""

from __future__ import annotations

from fertk.cli.options import JsonOutput, out, print_json


def info(json_output: JsonOutput = False) -> None:
    """Show versions, devices and which engine backends can run here (and why not)."""
    from fertk.engines import machine_info

    data = machine_info()
    if json_output:
        print_json(data)
        return
    from rich.markup import escape
    from rich.table import Table

    out.print(f"[bold]fertk[/] {data['fertk']}  python {data['python']}  {data['platform']}")
    out.print(f"cpu: {data['cpu']['model']} ({data['cpu']['cores']} cores), "
              f"torch threads {data['cpu']['torch_threads']}, memory {data['memory_gib']} GiB")
    gpus = data["gpus"]
    out.print("gpu: " + (", ".join(g["name"] for g in gpus) if gpus else "none visible to torch"))
    table = Table("package", "version")
    for name, version in data["packages"].items():
        table.add_row(name, escape(version) if version else "[dim]not installed[/]")
    out.print(table)
    backends = Table("backend", "available", "why / details")
    for b in data["backends"]:
        backends.add_row(b["name"], "[green]yes[/]" if b["available"] else "[red]no[/]", escape(b["reason"]))
    out.print(backends)
