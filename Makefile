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
SHIM    := shim/lguest-shim.so

# The C Launcher (Linux 3.16 tools/lguest) and what `make run-c` boots with it.
# INITRD: the project's initramfs once it exists (issue 11), else a helper's.
C_LAUNCHER ?= ../shared/linux/lguest-launcher-3.16-dynamic
KERNEL     ?= ../shared/linux/vmlinux
INITRD     ?= $(firstword $(wildcard images/linux-initrd.cpio.gz /work/helpers/quick-initrd.cpio.gz))

.PHONY: all run run-c test bench guest clean distclean i386-libc

all: $(STAMP) $(GUEST) $(DISK) $(SHIM)

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

# The preload shim that gives the i386 C Launcher a /dev/lguest (shim/).  It is
# built against Debian's 32-bit glibc (libc6-dev-i386), which the dynamic C
# Launcher needs at run time anyway (libc6-i386).  No libgcc is needed:
# -nostartfiles -nodefaultlibs and libc only.  The kernel's x86 asm/ headers
# serve both word sizes; Debian keeps them under the 64-bit multiarch dir.
$(SHIM): shim/lguest_shim.c | i386-libc
	gcc -m32 -O2 -Wall -Wextra -fPIC -shared -nostartfiles -nodefaultlibs \
	    -fno-stack-protector -idirafter /usr/include/x86_64-linux-gnu \
	    -o $@ $< -lc

i386-libc:
	@if [ ! -e /lib/ld-linux.so.2 ] || [ ! -e /usr/lib32/libc.so ]; then \
	    echo "installing Debian's libc6-i386 and libc6-dev-i386 (the i386 C Launcher and its shim need them)"; \
	    { apt-get install -y -q --no-install-recommends libc6-i386 libc6-dev-i386 >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && \
	        apt-get install -y -q --no-install-recommends libc6-i386 libc6-dev-i386 >/dev/null 2>&1; }; } || \
	    { echo "make: cannot install libc6-i386 and libc6-dev-i386 (needs root and Debian's apt-get): install them by hand"; exit 1; }; \
	fi

run: all
	$(PY) launcher.py --block=$(DISK) $(MEM_MB) $(GUEST)

# The Linux 3.16 C Launcher, unmodified, on pylguest's Host (c_launcher.py).  It
# exits 1 after every Guest death, a power-off too (errx(1, "CRASH: Power down")):
# only other statuses (a signal, 128+N) fail the target.
run-c: all
	@[ -e "$(C_LAUNCHER)" ] && [ -e "$(KERNEL)" ] || { echo "make run-c: needs $(C_LAUNCHER) and $(KERNEL) (see ../shared/linux/README.md)"; exit 1; }
	@[ -n "$(INITRD)" ] || { echo "make run-c: no initramfs: give INITRD=file.cpio.gz"; exit 1; }
	$(PY) c_launcher.py --launcher=$(C_LAUNCHER) --block=$(DISK) --initrd=$(INITRD) $(MEM_MB) $(KERNEL) console=hvc0 || [ $$? -eq 1 ]

# pytest exits 5 when it collected nothing: that is a failure for us too.
test: all
	$(PY) -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests ran"; exit 1; fi; exit $$rc

bench: all
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	$(MAKE) -C guest clean
	rm -f $(DISK) $(SHIM)

distclean: clean
	rm -rf $(VENV)
