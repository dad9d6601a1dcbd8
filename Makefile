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

.PHONY: all run test bench guest clean distclean

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

run: all
	$(PY) launcher.py --block=$(DISK) $(MEM_MB) $(GUEST)

# pytest exits 5 when it collected nothing: that is a failure for us too.
# -rs: every skipped test is listed with its reason.
test: all
	$(PY) -m pytest -q -rs tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests ran"; exit 1; fi; exit $$rc

bench: all
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	$(MAKE) -C guest clean
	rm -f $(DISK)

distclean: clean
	rm -rf $(VENV)
