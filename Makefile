# pylguest: the two commands a newcomer needs are `make run` and `make test`.
# Everything they depend on (the virtualenv, the guest kernel, the disk image)
# is built here from scratch, so a fresh clone on a fresh machine just works.

PYTHON3 ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
GUEST   := guest/guest.elf
GUEST_PAE := guest/guest-pae.elf
DISK    := images/disk.img
DISK_MB := 16
LABEL   := pylguest
MEM_MB  := 64
SHIM    := shim/lguest-shim.so

# Real Linux (README "Running Linux"): our initramfs, and a kernel from
# KERNEL=, by default the shared test kernel beside the repository.
INITRD     := images/linux-initrd.cpio.gz
LINUX_DIR  := ../shared/linux
KERNEL     ?= $(wildcard $(LINUX_DIR)/vmlinux)
LINUX_MEM  ?= 64
LINUX_ARGS ?=
LINUX_SRC  ?=
LINUX_OUT  ?= build/linux

# The Linux 3.16 C Launcher, for `make run-c`.
C_LAUNCHER ?= $(LINUX_DIR)/lguest-launcher-3.16-dynamic

.PHONY: all run run-linux run-c linux-kernel-given test bench soak guest linux-initrd linux-config linux-kernel
.PHONY: clean distclean i386-libc

all: $(STAMP) $(GUEST) $(GUEST_PAE) $(DISK) $(SHIM)

# unicorn is not in requirements.txt: the Host needs it built from the 2.1.4 sdist
# with our patches (patches/unicorn/*.patch; why: the comments there).  The wheel
# is cached outside the work tree, so only the first make on a machine builds it.
UNICORN_BUILD := $(wildcard patches/unicorn/*)

$(STAMP): requirements.txt $(UNICORN_BUILD)
	$(PYTHON3) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt
	sh patches/unicorn/build.sh $(PY)
	touch $@

# One make in guest/ builds both: guest.elf, and guest-pae.elf (PAE page tables).
guest $(GUEST) $(GUEST_PAE): $(wildcard guest/*.c guest/*.h guest/*.S guest/*.ld guest/Makefile)
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

# With the shared Linux kernels at hand, tests/test_linux*.py boot them with
# our initramfs, so it is made first.
LINUX_TEST_DEPS := $(if $(wildcard $(LINUX_DIR)/vmlinux $(LINUX_DIR)/bzImage $(LINUX_DIR)/vmlinux-pae),$(INITRD))

# The Linux 3.16 C Launcher, unmodified, on pylguest's Host (c_launcher.py).  It
# exits 1 after every Guest death, a power-off too (errx(1, "CRASH: Power down")):
# only other statuses (a signal, 128+N) fail the target.
run-c: linux-kernel-given all $(INITRD)
	@[ -e "$(C_LAUNCHER)" ] || { echo "make run-c: no C Launcher at $(C_LAUNCHER): give C_LAUNCHER= (see ../shared/linux/README.md)" >&2; exit 1; }
	$(PY) c_launcher.py --launcher=$(C_LAUNCHER) --block=$(DISK) --initrd=$(INITRD) $(LINUX_MEM) $(KERNEL) console=hvc0 $(LINUX_ARGS) || [ $$? -eq 1 ]

# pytest exits 5 when it collected nothing: that is a failure for us too.
# -rs: every skipped test is listed with its reason.
test: all $(LINUX_TEST_DEPS)
	$(PY) -m pytest -q -rs tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests ran"; exit 1; fi; exit $$rc

# bench/soak.py runs for minutes: it has a target of its own.
bench: all
	for b in $(filter-out bench/soak.py,$(wildcard bench/*.py)); do $(PY) $$b || exit 1; done

# The soak of a real Linux Guest (README "The soak"): root, MINUTES= long.
MINUTES ?= 10
soak: linux-kernel-given all $(INITRD)
	$(PY) bench/soak.py --minutes $(MINUTES) --kernel $(KERNEL)

clean:
	$(MAKE) -C guest clean
	rm -f $(DISK) $(INITRD) $(SHIM)

distclean: clean
	rm -rf $(VENV) images/cache
