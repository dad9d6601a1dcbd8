# pylguest: the two commands a newcomer needs are `make run` and `make test`.
# Everything they depend on (the virtualenv, the guest kernel, the disk image)
# is built here from scratch, so a fresh clone on a fresh machine just works.

PYTHON3 ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
GUEST   := guest/guest.elf
DISK    := images/disk.img
DISK_MB := 16
LABEL   := pylguest
MEM_MB  := 64

# Real Linux (README "Running Linux"): our initramfs, and a kernel from
# KERNEL=, by default the shared test kernel beside the repository.
INITRD     := images/linux-initrd.cpio.gz
LINUX_DIR  := ../shared/linux
KERNEL     ?= $(wildcard $(LINUX_DIR)/vmlinux)
LINUX_MEM  ?= 64
LINUX_ARGS ?=
LINUX_SRC  ?=
LINUX_OUT  ?= build/linux

.PHONY: all run run-linux linux-kernel-given test bench guest linux-initrd linux-config linux-kernel clean distclean

all: $(STAMP) $(GUEST) $(DISK)

$(STAMP): requirements.txt
	$(PYTHON3) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

guest $(GUEST): $(wildcard guest/*.c guest/*.h guest/*.S guest/*.ld guest/Makefile)
	$(MAKE) -C guest

# A real ext2 filesystem with a known label and a file in it: the demo prints
# its superblock, and the tests compare that with dumpe2fs -h.
$(DISK): $(wildcard images/rootfs/*)
	rm -f $@.tmp
	truncate -s $(DISK_MB)M $@.tmp
	/sbin/mke2fs -q -F -t ext2 -b 1024 -L $(LABEL) -d images/rootfs $@.tmp
	mv $@.tmp $@

# Debian's busybox-static for i386 and our /init, packed by cpio; the .deb
# is downloaded once into images/cache/.
linux-initrd $(INITRD): tools/linux-initrd.sh $(shell find images/linux-init -type f)
	tools/linux-initrd.sh $(INITRD)

run: all
	$(PY) launcher.py --block=$(DISK) $(MEM_MB) $(GUEST)

# A shell on your terminal in a Linux Guest; `poweroff -f` (or exit) ends it.
# The kernel is checked first: no point fetching busybox without one.
run-linux: linux-kernel-given all $(INITRD)
	$(PY) launcher.py --block=$(DISK) --initrd=$(INITRD) $(LINUX_MEM) $(KERNEL) console=hvc0 $(LINUX_ARGS)

linux-kernel-given:
	@if [ -z "$(KERNEL)" ]; then echo "make run-linux: no kernel: give KERNEL=path/to/vmlinux-or-bzImage (build one: make linux-kernel LINUX_SRC=path/to/linux-3.x, see README \"Running Linux\")" >&2; exit 1; fi
	@if [ ! -f "$(KERNEL)" ]; then echo "make run-linux: no kernel file $(KERNEL)" >&2; exit 1; fi

# A Guest kernel from a Linux 3.x tree of yours (README "Running Linux").
linux-config:
	tools/linux-kernel.sh --config-only "$(LINUX_SRC)" "$(LINUX_OUT)"

linux-kernel:
	tools/linux-kernel.sh "$(LINUX_SRC)" "$(LINUX_OUT)"

# With the shared Linux kernels at hand, tests/test_linux.py boots them with
# our initramfs, so it is made first.
LINUX_TEST_DEPS := $(if $(wildcard $(LINUX_DIR)/vmlinux $(LINUX_DIR)/bzImage),$(INITRD))

# pytest exits 5 when it collected nothing: that is a failure for us too.
# -rs: every skipped test is listed with its reason.
test: all $(LINUX_TEST_DEPS)
	$(PY) -m pytest -q -rs tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests ran"; exit 1; fi; exit $$rc

bench: all
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	$(MAKE) -C guest clean
	rm -f $(DISK) $(INITRD)

distclean: clean
	rm -rf $(VENV) images/cache
