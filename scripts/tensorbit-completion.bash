# bash completion for the tensorbit tools, from each tool's own option table:
# `tb-X --list-options` prints one option a line ("-m --model FILE",
# "--format = dense compressed-tensors", "--json"), so the completion cannot
# drift from the parser. Source it: . scripts/tensorbit-completion.bash

_tensorbit_complete()
{
    local cur prev tool=$1 spec
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD - 1]}
    spec=$("$tool" --list-options 2>/dev/null) || return 0

    # the value of the option before the cursor
    local line
    line=$(printf '%s\n' "$spec" | awk -v p="$prev" '{ for (i = 1; i <= NF; i++) if ($i == p) { print; exit } }')
    if [[ -n $line && $prev == -* ]]; then
        case $line in
        *" = "*) # choices
            COMPREPLY=($(compgen -W "${line#* = }" -- "$cur"))
            return 0 ;;
        *" FILE") COMPREPLY=($(compgen -f -- "$cur")); compopt -o filenames 2>/dev/null; return 0 ;;
        *" VALUE") return 0 ;;
        esac
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$(printf '%s\n' "$spec" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^-/) print $i }')" -- "$cur"))
        return 0
    fi
    COMPREPLY=($(compgen -f -- "$cur"))
    compopt -o filenames 2>/dev/null
}

complete -F _tensorbit_complete tb-tokenize tb-fisher tb-score tb-nm tb-pack tb-recon tb-merge tb-inspect tb-run tb-export tb-synth tb-distill
