"""The CLI has no logic the API lacks: every verb's module imports only lamina's public API
(and its sibling formatting modules), and never reaches into the store's files."""
import ast
import importlib
import pkgutil

import lamina.cli

# What a program built on lamina may use too (documented in the README's API section).
PUBLIC_API = {
    "lamina", "lamina.errors", "lamina.reference", "lamina.images", "lamina.store", "lamina.transports",
    "lamina.layer", "lamina.unpacker", "lamina.atomic", "lamina.timefmt",
    "lamina.registry", "lamina.registry.pull", "lamina.registry.push", "lamina.registry.login",
    "lamina.registry.progress", "lamina.registry.source", "lamina.bench", "lamina.bench_choices",
    "lamina.trace", "lamina.quoting",
}
# From lamina.store only the Store class: its layout, locks and gc are the library's business.
STORE_NAMES = {"Store"}


def _cli_modules():
    return ["lamina.cli"] + [m.name for m in pkgutil.iter_modules(lamina.cli.__path__, "lamina.cli.")]


def _imports(module_name):
    """(module imported, names taken from it, line) of every import in a module, absolute."""
    module = importlib.import_module(module_name)
    tree = ast.parse(open(module.__file__).read())
    package = module_name if module.__file__.endswith("__init__.py") else module_name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [a.name for a in node.names]
            if node.level and not node.module:  # from .. import images -> lamina.images
                for n in names:
                    yield f"{base}.{n}" if f"{base}.{n}" in PUBLIC_API or base == "lamina.cli" else base, [n], \
                        node.lineno
            else:
                yield base, names, node.lineno


def test_cli_modules_use_only_the_public_api():
    bad = []
    for mod in _cli_modules():
        for target, names, line in _imports(mod):
            if not target.startswith("lamina"):
                continue  # the standard library and third-party formatting helpers
            if target == "lamina.cli" or target.startswith("lamina.cli."):
                continue
            if target not in PUBLIC_API:
                bad.append(f"{mod}:{line} imports {target}")
            elif target == "lamina.store" and set(names) - STORE_NAMES:
                bad.append(f"{mod}:{line} imports {sorted(set(names) - STORE_NAMES)} from lamina.store")
    assert bad == [], "the CLI reaches past the API:\n" + "\n".join(bad)


def test_cli_modules_do_not_touch_the_store_layout():
    """``store.paths`` (where blobs, locks and snapshots live) is the library's, not the CLI's."""
    bad = []
    for mod in _cli_modules():
        module = importlib.import_module(mod)
        for node in ast.walk(ast.parse(open(module.__file__).read())):
            if isinstance(node, ast.Attribute) and node.attr in ("paths", "_take_lease", "index"):
                bad.append(f"{mod}:{node.lineno} uses .{node.attr}")
    assert bad == [], "\n".join(bad)


def test_every_docker_verb_has_an_api_function():
    from lamina import images
    for name in ("ls", "inspect", "history", "tag", "remove", "prune", "disk_usage", "mount", "umount", "unpack"):
        assert callable(getattr(images, name)), name
