#!/bin/sh
# glassbox container entry point (also run outside a container by scripts/validate-deploy.sh).
#
#   (no arguments) or "serve ..."  ->  glassbox serve [--config $GLASSBOX_CONFIG_FILE] ...
#   "predict ..."                  ->  glassbox predict [--config ...] ...
#   "--flag ..."                   ->  glassbox serve --flag ...
#   anything else ("openapi", "--help" after a subcommand, ...) is passed to glassbox as is.
#
# Settings come from GLASSBOX_<SECTION>__<SETTING> variables, read by glassbox itself. This
# script only adds --config when GLASSBOX_CONFIG_FILE names a file, checks that a local model
# folder exists (with a hint about mounting one), and then execs glassbox, so that glassbox is
# PID 1 and receives SIGTERM directly (it drains in-flight requests, then exits).
#
# GLASSBOX_BIN overrides the binary (tests run this script against a locally built one).
set -eu

bin="${GLASSBOX_BIN:-/usr/local/bin/glassbox}"

if [ "$#" -eq 0 ]; then
    set -- serve
fi
case "$1" in
    -*) set -- serve "$@" ;;
esac

case "$1" in
    serve | predict)
        command="$1"
        shift
        # A --model flag wins over the environment; only check the environment's folder.
        model_flag=0
        for arg in "$@"; do
            case "$arg" in --model | --model=*) model_flag=1 ;; esac
        done
        source="${GLASSBOX_MODEL__SOURCE:-}"
        if [ "$model_flag" = 0 ] && [ -n "$source" ]; then
            case "$source" in
                /* | ./* | ../*)
                    if [ ! -f "$source/config.json" ]; then
                        echo "glassbox: no model at $source (GLASSBOX_MODEL__SOURCE): it has no config.json." >&2
                        echo "glassbox: mount a Hugging Face model folder there read-only, e.g." >&2
                        echo "glassbox:   docker run -v \"\$PWD/models/all-MiniLM-L6-v2:$source:ro\" ..." >&2
                        echo "glassbox: or build the image with --build-arg BAKE_MODEL=1 (the default)." >&2
                        exit 78 # EX_CONFIG
                    fi
                    ;;
            esac
        fi
        if [ -n "${GLASSBOX_CONFIG_FILE:-}" ]; then
            if [ ! -f "$GLASSBOX_CONFIG_FILE" ]; then
                echo "glassbox: GLASSBOX_CONFIG_FILE=$GLASSBOX_CONFIG_FILE is not a file; mount it or unset the variable" >&2
                exit 78
            fi
            set -- "$command" --config "$GLASSBOX_CONFIG_FILE" "$@"
        else
            set -- "$command" "$@"
        fi
        ;;
esac

exec "$bin" "$@"
