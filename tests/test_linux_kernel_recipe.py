"""tools/linux-kernel.sh, the recipe for a Guest kernel from the user's Linux 3.x tree,
run against a stand-in tree whose Makefile plays Kconfig's part: allnoconfig writes
.config from KCONFIG_ALLCONFIG (in a Kconfig choice, the last line given wins, and a
CC_STACKPROTECTOR_* choice turns CC_STACKPROTECTOR on), and the build records the
KCFLAGS it was given.  No Linux source needed."""
import os
import shutil
import subprocess

import pytest

from conftest import ROOT

FAKE_MAKEFILE = """\
VERSION = 3
PATCHLEVEL = 99
allnoconfig:
\t@mkdir -p $(O)
\t@model=$$(grep -E '^CONFIG_(NOHIGHMEM|HIGHMEM4G|HIGHMEM64G)=y' $(KCONFIG_ALLCONFIG) | tail -n 1); \\
\t grep -E '^CONFIG_[A-Za-z0-9_]+=' $(KCONFIG_ALLCONFIG) \\
\t   | grep -v -E '^CONFIG_(NOHIGHMEM|HIGHMEM4G|HIGHMEM64G)=' >$(O)/.config; \\
\t [ -z "$$model" ] || echo "$$model" >>$(O)/.config; \\
\t if grep -q -E '^CONFIG_CC_STACKPROTECTOR_(REGULAR|STRONG)=y' $(O)/.config; then \\
\t     echo CONFIG_CC_STACKPROTECTOR=y >>$(O)/.config; fi
kernelversion:
\t@echo 3.99.0
vmlinux bzImage:
\t@echo '$(KCFLAGS)' >$(O)/kcflags
\t@touch $(O)/vmlinux
"""

needs_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("gcc", "make", "bc", "perl")),
    reason="the recipe needs gcc, make, bc and perl")


@pytest.fixture
def fake_tree(tmp_path):
    src = tmp_path / "linux"
    (src / "arch/x86/lguest").mkdir(parents=True)
    (src / "arch/x86/lguest/boot.c").write_text("")
    (src / "include/linux").mkdir(parents=True)
    (src / "include/linux/compiler-gcc4.h").write_text("")
    (src / "Makefile").write_text(FAKE_MAKEFILE)
    return src


def recipe(src, out, add=""):
    env = dict(os.environ, LINUX_CONFIG_ADD=add, LINUX_JOBS="1")
    return subprocess.run([str(ROOT / "tools/linux-kernel.sh"), str(src), str(out)],
                          env=env, capture_output=True, text=True, timeout=120)


@needs_tools
def test_pae_configuration_replaces_our_default_memory_model(fake_tree, tmp_path):
    out = tmp_path / "out"
    r = recipe(fake_tree, out, "CONFIG_HIGHMEM64G=y")
    assert r.returncode == 0, r.stdout + r.stderr
    config = (out / ".config").read_text().split()
    assert "CONFIG_HIGHMEM64G=y" in config and "CONFIG_HIGHMEM4G=y" not in config


@needs_tools
def test_an_option_that_stays_off_is_still_an_error(fake_tree, tmp_path):
    out = tmp_path / "out"
    # The stand-in Kconfig keeps every line it is given, so make one vanish: an
    # option from our fragment that a user's memory model does not replace.
    (fake_tree / "Makefile").write_text(FAKE_MAKEFILE.replace(
        "| grep -v -E '^CONFIG_(NOHIGHMEM", "| grep -v -x CONFIG_EXT2_FS=y | grep -v -E '^CONFIG_(NOHIGHMEM"))
    r = recipe(fake_tree, out, "CONFIG_NOHIGHMEM=y")
    assert r.returncode == 1
    missing = r.stderr.split("would not turn on:")[1].split("(see")[0].split()
    assert missing == ["CONFIG_EXT2_FS"], r.stderr


@needs_tools
def test_stack_protector_is_built_only_when_configured(fake_tree, tmp_path):
    plain = recipe(fake_tree, tmp_path / "plain")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    flags = (tmp_path / "plain/kcflags").read_text().split()
    if not any("stack-protector" in f for f in flags):
        pytest.skip("this gcc knows no -fno-stack-protector")
    assert "-fno-stack-protector" in flags

    strong = recipe(fake_tree, tmp_path / "strong", "CONFIG_CC_STACKPROTECTOR_STRONG=y")
    assert strong.returncode == 0, strong.stdout + strong.stderr
    flags = (tmp_path / "strong/kcflags").read_text().split()
    assert "-fno-stack-protector" not in flags and "-fno-pie" in flags
