# Set-up and everyday commands. `make run` and `make test` install first when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install run proto generate test fuzz soak image clean

install: $(STAMP)

# torch is installed on its own first so the CPU build is taken, never a newer CUDA one.
$(STAMP): pyproject.toml operator/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet -e 'operator/[test]'
	touch $(STAMP)

# The gRPC server on :50051 (health, reflection) and Prometheus /metrics on :9090.
run: $(STAMP)
	$(BIN)/orpheus-tts serve $(ARGS)

# Regenerate the gRPC code in server/orpheus_tts/api/gen/ from protos/ (commit the result).
proto: $(STAMP)
	$(BIN)/python -m orpheus_tts.api.protogen

# Rewrite every generated copy (CRDs, adapter rules, KEDA queries, operator facts, config defaults and
# reference) from its one source; the test suite fails when one has drifted.
generate: $(STAMP)
	$(BIN)/python -m tools.generate

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

# The long runs of the property-based tests (thousands of examples per request kind) and of the soak
# (5 rounds of 300 mixed requests, the first a warm-up; its figures are printed and written to soak.json).
fuzz: $(STAMP)
	ORPHEUS_TTS_FUZZ=long $(BIN)/python -m pytest -q --timeout=0 tests/server/test_fuzz_grpc.py tests/server/test_fuzz_http.py $(ARGS)

soak: $(STAMP)
	ORPHEUS_TTS_SOAK=full ORPHEUS_TTS_SOAK_JSON=soak.json $(BIN)/python -m pytest -q -s tests/server/test_soak.py $(ARGS)

# The server, engine builder and operator images (Dockerfile; docs/container-image.md), tagged
# with the chart's appVersion; `make image VERSION=x.y.z SOURCE_URL=https://...` overrides either.
VERSION ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$$/\1/p' charts/orpheus-tts/Chart.yaml)
image:
	@docker info >/dev/null 2>&1 || { echo "make image needs Docker: a docker CLI talking to a running engine (none answered here)" >&2; exit 1; }
	docker build --target server --build-arg VERSION=$(VERSION) $(if $(SOURCE_URL),--build-arg SOURCE_URL=$(SOURCE_URL)) -t orpheus-tts:$(VERSION) .
	docker build --target builder --build-arg VERSION=$(VERSION) $(if $(SOURCE_URL),--build-arg SOURCE_URL=$(SOURCE_URL)) -t orpheus-tts-builder:$(VERSION) .
	docker build --target operator --build-arg VERSION=$(VERSION) $(if $(SOURCE_URL),--build-arg SOURCE_URL=$(SOURCE_URL)) -t orpheus-operator:$(VERSION) .

clean:
	rm -rf $(VENV) build *.egg-info server/*.egg-info .pytest_cache
