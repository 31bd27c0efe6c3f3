# tensorbit - build, test, install.
#
#   make                    CPU toolkit (tools in build/bin, library build/libtensorbit.a)
#   make CUDA=1             also compile kernels/cuda/*.cu with nvcc (CUDA_HOME or PATH)
#   make CUDA=1 CUDA_ARCHS="80;90"   choose GPU architectures (default 75;80;86;89;90)
#   make NVTX=1             compile NVTX ranges in (with CUDA=1)
#   make CUDA=1 CUSPARSELT=1  2:4 prefill through NVIDIA cuSPARSELt (CUSPARSELT_HOME, else
#                           scripts/cusparselt.sh finds or fetches the PyPI wheel; never required)
#   make SANITIZE=1         ASan + UBSan build in build-san/
#   make test               unit tests (cmocka) and CLI tests (bats)
#   make test-slurm         examples/slurm on a local single-node Slurm (root)
#   make bench              benchmarks (figures go to bench/results/, see BENCHMARKS.md)
#   make install PREFIX=/usr/local
#   make clean              remove every build tree (needs none of the libraries)
#
# Sources are found by directory, so adding a file needs no Makefile edit:
# common/ formats/ kernels/cpu/ -> library; tools/tb-*.c -> one binary each;
# tests/unit/test_*.c -> one cmocka binary each.

.DEFAULT_GOAL := all
PREFIX     ?= /usr/local
CC         ?= cc
CUDA       ?= 0
NVTX       ?= 0
CUSPARSELT ?= 0
SANITIZE   ?= 0
CUDA_ARCHS ?= 75;80;86;89;90

# a build tree per set of flags, so objects never mix: build, build-cuda,
# build-san, build-cuda-san, build-clang, build-fuzz ... (make clean removes them all)
ifeq ($(FUZZ),1)
# libFuzzer harnesses (make fuzz): clang, ASan + UBSan, halting on any report
BUILD ?= build-fuzz
CC := clang
SANFLAGS := -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
else ifeq ($(SANITIZE),1)
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else
SANFLAGS :=
endif
CC_NAME := $(notdir $(firstword $(CC)))
BUILD ?= build$(if $(filter 1,$(CUDA)),-cuda)$(if $(filter 1,$(CUDA)),$(if $(filter 1,$(CUSPARSELT)),-cslt))$(if $(filter 1,$(SANITIZE)),-san)$(if $(filter-out cc gcc,$(CC_NAME)),-$(CC_NAME))
BIN := $(BUILD)/bin
V ?= 0
Q := $(if $(filter 1,$(V)),,@)

# the libraries are looked for only when something is compiled: make clean,
# uninstall and check-env work on a machine without them
NO_COMPILE_GOALS := clean uninstall check-env print-build
COMPILING := $(if $(MAKECMDGOALS),$(filter-out $(NO_COMPILE_GOALS),$(MAKECMDGOALS)),all)
PKGS := libcjson openblas lapacke
ifneq ($(COMPILING),)
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
ifeq ($(strip $(PKG_LIBS)),)
$(error pkg-config cannot find $(PKGS): run scripts/setup.sh)
endif
endif

# a baseline every machine of the architecture runs (x86-64-v2: SSE4.2,
# POPCNT; Armv8.2-A: Graviton 2 and later, Grace); ARCH_FLAGS= to override
MACHINE := $(shell uname -m)
ifeq ($(MACHINE),x86_64)
ARCH_FLAGS ?= -march=x86-64-v2
else ifneq ($(filter aarch64 arm64,$(MACHINE)),)
ARCH_FLAGS ?= -march=armv8.2-a
else
ARCH_FLAGS ?=
endif

OPT      ?= -O2 -g
WARN     := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-unused-parameter
CPPFLAGS += -D_DEFAULT_SOURCE -Icommon -Iformats -Ikernels -Ikernels/cpu -Ikernels/cuda $(PKG_CFLAGS)
CFLAGS   += -std=c11 $(OPT) $(WARN) -pthread $(ARCH_FLAGS) $(SANFLAGS)
LDFLAGS  += -pthread $(SANFLAGS)
LDLIBS   += $(PKG_LIBS) -lm

# the version is compiled into common/tb_version.c alone, which is rebuilt
# when the version changes (the stamp is rewritten only then)
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo unknown)
VERSION_STAMP := $(BUILD)/version.stamp
ifneq ($(COMPILING),)
$(shell mkdir -p $(BUILD) && (echo '$(VERSION)' | cmp -s - $(VERSION_STAMP) || echo '$(VERSION)' > $(VERSION_STAMP)))
endif
$(BUILD)/obj/common/tb_version.o: $(VERSION_STAMP)
$(BUILD)/obj/common/tb_version.o: CPPFLAGS += -DTB_VERSION_STRING=\"$(VERSION)\"

# On x86-64, kernels/cpu/*_avx2.c and *_avx512.c are built for their ISA
# above the ARCH_FLAGS floor and entered only on CPUs that have it (run-time
# dispatch in tb_gemv.c); other targets build the scalar kernels only.
ifeq ($(MACHINE),x86_64)
$(BUILD)/obj/kernels/cpu/%_avx2.o: CFLAGS += -mavx2 -mfma -mf16c
$(BUILD)/obj/kernels/cpu/%_avx512.o: CFLAGS += -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl
endif

LIB_SRC := $(wildcard common/*.c formats/*.c kernels/*.c kernels/cpu/*.c)
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)

# ---- optional CUDA ----
comma := ,
ifeq ($(CUDA),1)
ifneq ($(strip $(CUDA_HOME)),)
NVCC ?= $(CUDA_HOME)/bin/nvcc
else
NVCC ?= $(shell command -v nvcc 2>/dev/null)
endif
ifeq ($(strip $(NVCC))$(if $(COMPILING),,none),)
$(error CUDA=1 but nvcc is neither on PATH nor in $$CUDA_HOME/bin)
endif
CUDA_ROOT := $(patsubst %/bin/nvcc,%,$(NVCC))
CU_SRC    := $(wildcard kernels/cuda/*.cu)
CU_OBJ    := $(CU_SRC:%.cu=$(BUILD)/obj/%.o)
GENCODE   := $(foreach a,$(subst ;, ,$(CUDA_ARCHS)),-gencode arch=compute_$(a),code=sm_$(a))
NVCCFLAGS ?= -O2 -std=c++17 -Xcompiler -Wall,-Werror
CPPFLAGS  += -DTB_HAVE_CUDA=1 -DTB_CUDA_ARCHS=\"$(subst ;,$(comma),$(CUDA_ARCHS))\" -I$(CUDA_ROOT)/include
LDLIBS    += -L$(CUDA_ROOT)/lib64 -Wl,-rpath,$(CUDA_ROOT)/lib64 -lcusolver -lcublas -lcudart -lstdc++
CPPFLAGS  += -DTB_HAVE_CUDA_BACKEND=1 # kernels/cuda/tb_backend_cuda.cu
ifeq ($(NVTX),1)
CPPFLAGS  += -DTB_HAVE_NVTX=1
endif
# cuSPARSELt for 2:4 weights at prefill token counts (kernels/cuda/tb_sp24_cslt.cu);
# its wheel has no unversioned libcusparseLt.so, hence -l:
ifeq ($(CUSPARSELT),1)
ifneq ($(COMPILING),)
CUSPARSELT_HOME := $(or $(CUSPARSELT_HOME),$(shell scripts/cusparselt.sh))
ifeq ($(strip $(CUSPARSELT_HOME)),)
$(error CUSPARSELT=1 but no cuSPARSELt: set CUSPARSELT_HOME or see scripts/cusparselt.sh)
endif
endif
CPPFLAGS  += -DTB_HAVE_CUSPARSELT=1 -I$(CUSPARSELT_HOME)/include
LDLIBS    += -L$(CUSPARSELT_HOME)/lib -Wl,-rpath,$(CUSPARSELT_HOME)/lib -l:libcusparseLt.so.0
endif
LIB_OBJ   += $(CU_OBJ)
endif

LIB := $(BUILD)/libtensorbit.a
TOOLS := $(patsubst tools/%.c,$(BIN)/%,$(wildcard tools/tb-*.c))
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
HELPERS := $(patsubst tests/helpers/%.c,$(BUILD)/tests/helpers/%,$(wildcard tests/helpers/*.c))
CUDA_TEST_BIN := $(patsubst tests/cuda/%.c,$(BUILD)/tests/cuda/%,$(wildcard tests/cuda/test_*.c))
MANS := $(wildcard man/*.1)
MANS7 := $(wildcard man/*.7)

.PHONY: all test unit cli test-slurm regress fuzz fuzz-run bench install uninstall clean demo check-env print-build test-cuda
.SECONDARY:
all: $(TOOLS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC    $<"
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/obj/%.o: %.cu
	@mkdir -p $(dir $@)
	@echo "  NVCC  $<"
	$(Q)$(NVCC) $(NVCCFLAGS) $(GENCODE) $(filter -D% -I%,$(CPPFLAGS)) -MMD -MP -c $< -o $@

$(LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(Q)rm -f $@ && ar rcs $@ $^

$(BIN)/%: $(BUILD)/obj/tools/%.o $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) $< $(LIB) $(LDLIBS) -o $@

$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(LDFLAGS) $< $(LIB) $(LDLIBS) $(shell pkg-config --libs cmocka) -o $@

$(BUILD)/tests/helpers/%: $(BUILD)/obj/tests/helpers/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(LDFLAGS) $< $(LIB) $(LDLIBS) -o $@

$(BUILD)/tests/cuda/%: $(BUILD)/obj/tests/cuda/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(LDFLAGS) $< $(LIB) $(LDLIBS) -o $@

# The backends on the GPU: every op against the CPU backend, the whole models
# against the goldens (tests/cuda). Each program skips (exit 0) with a message
# when the build has no CUDA or the machine no GPU.
test-cuda: $(CUDA_TEST_BIN) $(TOOLS)
	@set -e; for t in $(CUDA_TEST_BIN); do echo "== $$t"; ./$$t; done
	@TB_BIN=$(abspath $(BIN)) sh tests/cuda/tools.sh

unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; ./$$t; done

cli: $(TOOLS) $(HELPERS)
	TB_BIN=$(abspath $(BIN)) TB_HELPERS=$(abspath $(BUILD)/tests/helpers) TB_SANITIZE=$(filter 1,$(SANITIZE)) bats tests/cli

# ---- fuzzing (tests/fuzz/README.md) ----
# make fuzz [FUZZ_SECONDS=60] [FUZZ_TARGETS="tb tbm"]: each libFuzzer harness
# tests/fuzz/fuzz_NAME.c built with clang in build-fuzz/ and run FUZZ_SECONDS
# from its seeds. `make regress` (part of make test, any compiler, SANITIZE=1
# too) replays every seed and every kept crashing input through the harnesses.
FUZZ_NAMES := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_TARGETS ?= $(FUZZ_NAMES)
FUZZ_SECONDS ?= 60
REPLAY_BIN := $(FUZZ_NAMES:%=$(BUILD)/tests/fuzz/fuzz_%)

$(BUILD)/tests/fuzz/fuzz_%: $(BUILD)/obj/tests/fuzz/fuzz_%.o $(BUILD)/obj/tests/fuzz/replay.o $(LIB)
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/fuzz/fuzz_%: $(BUILD)/obj/tests/fuzz/fuzz_%.o $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -fsanitize=fuzzer $^ $(LDLIBS) -o $@

regress: $(REPLAY_BIN)
	@set -e; for n in $(FUZZ_NAMES); do \
	    timeout 300 ./$(BUILD)/tests/fuzz/fuzz_$$n tests/fuzz/corpus/$$n $$(ls -d tests/fuzz/regress/$$n 2>/dev/null); done

fuzz:
	$(MAKE) FUZZ=1 fuzz-run

fuzz-run: $(FUZZ_TARGETS:%=$(BUILD)/fuzz/fuzz_%)
	tests/fuzz/run.sh $(FUZZ_SECONDS) $(BUILD)/fuzz $(FUZZ_TARGETS)

test: all unit cli regress

# examples/slurm on a single-node Slurm brought up on localhost (root; installs
# slurm-wlm and munge with apt-get when missing, else skips): .ci/run runs it
test-slurm: all
	TB_BIN=$(abspath $(BIN)) tests/slurm/run.sh

bench: all
	TB_BIN=$(abspath $(BIN)) bench/run.sh

demo: all
	examples/demo.sh $(BIN)

check-env:
	scripts/check-env.sh

# the build tree of these flags (make print-build SANITIZE=1 -> build-san)
print-build:
	@echo $(BUILD)

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man7 \
	    $(DESTDIR)$(PREFIX)/share/bash-completion/completions
	install -m 755 $(TOOLS) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(MANS) $(DESTDIR)$(PREFIX)/share/man/man1/
	install -m 644 $(MANS7) $(DESTDIR)$(PREFIX)/share/man/man7/
	install -m 644 scripts/tensorbit-completion.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/tensorbit

uninstall:
	rm -f $(addprefix $(DESTDIR)$(PREFIX)/bin/,$(notdir $(TOOLS)))
	rm -f $(addprefix $(DESTDIR)$(PREFIX)/share/man/man1/,$(notdir $(MANS)))
	rm -f $(addprefix $(DESTDIR)$(PREFIX)/share/man/man7/,$(notdir $(MANS7)))
	rm -f $(DESTDIR)$(PREFIX)/share/bash-completion/completions/tensorbit

clean:
	rm -rf build build-*

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
