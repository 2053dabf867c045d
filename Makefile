# The two commands: `make image` (set-up + build the default guest) and `make test`.
# Both do all set-up (scripts/setup.sh: Debian packages, npm ci, compile) first.
.PHONY: all setup image test bench typecheck clean

# Packages only the tests need on top of the product's own list (scripts/debian-packages.txt).
# kmod: the tests compare our .modinfo reader with kmod's modinfo (and run depmod).
# cpio: reads back our own cpio writer's archives.
# tgt, libiscsi-bin: a real iSCSI target (tgtd) loads the generated targets.conf; iscsi-ls sees it.
TEST_PACKAGES := gcc-aarch64-linux-gnu libc6-dev-arm64-cross kmod cpio tgt libiscsi-bin

all: image

setup:
	./scripts/setup.sh

image: setup
	npm run -s build:image

test:
	./scripts/setup.sh $(TEST_PACKAGES)
	npm run -s typecheck
	npm test

bench: setup
	npm run -s bench

typecheck: setup
	npm run -s typecheck

clean:
	rm -rf build out node_modules/.domu-lock-sha256
