# idstitch: `make run` starts the daemon, `make test` runs every test. Both install what is missing.
#
# Everything builds with the release profile so that RocksDB's C++ (10 to 25 minutes on two
# cores) is compiled once and shared by run, test and bench.

CARGO    ?= cargo
DATA_DIR ?= data/store
SOCKET   ?= $(DATA_DIR)/idstitch.sock
BIN      := target/release/idstitch

.PHONY: deps build run test lint unit sdk-test load-check bench bench-engine clean

deps:
	@scripts/ensure-deps.sh

build: deps
	$(CARGO) build --release --locked

run: build
	@mkdir -p $(DATA_DIR)
	@echo
	@echo "idstitch is starting on $(SOCKET). In another terminal, send the sample events and read a person:"
	@echo "  curl --unix-socket $(SOCKET) -H 'content-type: application/json' --data @data/sample-events.json http://localhost/batch/"
	@echo "  curl --unix-socket $(SOCKET) 'http://localhost/api/projects/phc_sample/persons/?distinct_id=max@hedgehogmail.com'"
	@echo
	$(BIN) serve --data-dir $(DATA_DIR) --socket $(SOCKET)

lint: deps
	$(CARGO) fmt --check
	$(CARGO) clippy --release --locked --all-targets -- -D warnings

unit: deps
	$(CARGO) test --release --locked

sdk-test: build
	scripts/sdk-setup.sh
	IDSTITCH_BIN=$(BIN) tests/sdk/run.sh

# The load generator's correctness check, small and untimed: a seeded workload of every
# identity scenario against the real daemon, its persons compared with a model of the spec.
load-check: build
	$(CARGO) bench --locked --bench load -- --events 20000

test: lint unit sdk-test load-check

# `make bench`: the short load-generator run (issue 6, under 2 minutes). The other benches:
# `make bench-engine` (criterion, issue 2), benches/snapshot.sh, benches/insights.sh,
# benches/soak.sh; numbers and commands in benches/README.md.
bench: build
	$(CARGO) bench --locked --bench load -- --quick

bench-engine: build
	$(CARGO) bench --locked --bench engine -- --quick

# `make fuzz`: each fuzz target for FUZZ_SECONDS (default 60) seconds; see fuzz/README.md.
.PHONY: fuzz
fuzz: build
	FUZZ_SECONDS=$(or $(FUZZ_SECONDS),60) scripts/fuzz.sh

clean:
	$(CARGO) clean
