#!/usr/bin/env bash
# Proves that the Dockerfile's runtime stage holds every shared library idgate needs.
#
#   tests/runtime-libs.sh [--dockerfile FILE] BINARY [BINARY...]
#
# 1. Reads the package list of the runtime stage's `apt-get install` out of the
#    Dockerfile (the stage named `runtime`), and checks that it starts FROM
#    debian:bookworm-slim, the image whose package set is listed in BASE below.
# 2. Checks that every package in that list exists (`apt-cache show`).
# 3. Takes `ldd` of each binary: every library the dynamic loader resolves, direct or
#    indirect. A library that does not resolve fails the check.
# 4. Maps each resolved file to the Debian package that ships it (`dpkg -S`), and fails
#    unless that package is in the Dockerfile's runtime list or in BASE.
#
# The binaries are built on this machine, so the check means something only when this
# machine is Debian 12 (bookworm), the release of both the builder and the runtime image:
# package names carry sonames (libicu72), which differ between releases. On another
# release the script fails and says so rather than pass on the wrong facts.
#
# With several binaries (the debug and the release build), the union of their libraries
# is checked, and the script reports whether they link the same set.
#
# Libraries loaded with dlopen are not seen by ldd. idgate's only ones would be glibc's
# NSS and gconv modules, which are in libc6 (BASE); a full demo SAML login run with
# LD_DEBUG=files loads nothing else.
#
# Exit status: 0 when every library is covered, 1 when not, 2 on a usage error.

set -euo pipefail

# The packages debian:bookworm-slim ships, from its build manifest
# (debuerreotype/docker-debian-artifacts, bookworm/slim/rootfs.manifest). That is Debian's
# `Priority: required` set plus what those packages depend on: since bookworm, most
# libraries carry `Priority: optional` and are present only as dependencies (libc6,
# libgcc-s1, libstdc++6, zlib1g and liblzma5 among them), so the manifest is the source
# of truth, not the Priority field.
BASE="
adduser apt base-files base-passwd bash bsdutils coreutils dash debconf
debian-archive-keyring debianutils diffutils dpkg e2fsprogs findutils gcc-12-base gpgv
grep gzip hostname init-system-helpers libacl1 libapt-pkg6.0 libattr1 libaudit-common
libaudit1 libblkid1 libbz2-1.0 libc-bin libc6 libcap-ng0 libcap2 libcom-err2 libcrypt1
libdb5.3 libdebconfclient0 libext2fs2 libffi8 libgcc-s1 libgcrypt20 libgmp10 libgnutls30
libgpg-error0 libhogweed6 libidn2-0 liblz4-1 liblzma5 libmd0 libmount1 libnettle8
libp11-kit0 libpam-modules libpam-modules-bin libpam-runtime libpam0g libpcre2-8-0
libseccomp2 libselinux1 libsemanage-common libsemanage2 libsepol2 libsmartcols1 libss2
libstdc++6 libsystemd0 libtasn1-6 libtinfo6 libudev1 libunistring2 libuuid1 libxxhash0
libzstd1 login logsave mawk mount ncurses-base ncurses-bin passwd perl-base sed
sysvinit-utils tar tzdata usr-is-merged util-linux util-linux-extra zlib1g
"
BASE_IMAGE="debian:bookworm-slim"
# Runtime packages needed for something other than a linked library (data files, tools),
# each with its reason. Every other package in the runtime list must provide at least one
# library the binary loads, so the list stays exactly what idgate needs.
#   (none: idgate verifies outbound TLS against the webpki roots compiled into it, so it
#   needs no ca-certificates, and it runs no other program)
NON_LIBRARY_PACKAGES=""
RUNTIME_STAGE="runtime"

usage() {
    echo "usage: $0 [--dockerfile FILE] BINARY [BINARY...]" >&2
    exit 2
}

dockerfile="$(cd "$(dirname "$0")/.." && pwd)/Dockerfile"
binaries=()
while [ $# -gt 0 ]; do
    case "$1" in
        --dockerfile) [ $# -ge 2 ] || usage; dockerfile="$2"; shift 2 ;;
        -h|--help) usage ;;
        -*) usage ;;
        *) binaries+=("$1"); shift ;;
    esac
done
[ ${#binaries[@]} -gt 0 ] || usage

failures=0
fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}

for tool in ldd dpkg-query apt-cache awk; do
    command -v "$tool" >/dev/null 2>&1 || { echo "FAIL: $tool is not installed"; exit 1; }
done

# --- 0. This machine -------------------------------------------------------------------
codename="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")"
if [ "$codename" != "bookworm" ]; then
    echo "FAIL: this machine is '${codename:-unknown}', not Debian bookworm: its library packages"
    echo "      are not the ones $BASE_IMAGE installs, so nothing can be proven here."
    exit 1
fi

# --- 1. The Dockerfile's runtime stage -------------------------------------------------
[ -r "$dockerfile" ] || { echo "FAIL: cannot read $dockerfile"; exit 1; }

# Joins continuation lines, drops comment lines, and prints the instructions of the stage
# named $RUNTIME_STAGE, one per line.
runtime_instructions() {
    awk -v stage="$RUNTIME_STAGE" '
        function flush() {
            if (buf == "") return
            n = split(buf, w, /[ \t]+/)
            if (toupper(w[1]) == "FROM") {
                inside = 0
                for (i = 2; i < n; i++)
                    if (toupper(w[i]) == "AS" && tolower(w[i + 1]) == stage) inside = 1
            }
            if (inside) print buf
            buf = ""
        }
        /^[ \t]*#/ { next }
        {
            line = $0
            cont = sub(/\\[ \t]*$/, "", line)
            sub(/^[ \t]+/, "", line)
            buf = (buf == "" ? line : buf " " line)
            if (!cont) flush()
        }
        END { flush() }
    ' "$dockerfile"
}

instructions="$(runtime_instructions)"
from_line="$(printf '%s\n' "$instructions" | awk 'toupper($1) == "FROM" { print; exit }')"
if [ -z "$from_line" ]; then
    echo "FAIL: $dockerfile has no stage named '$RUNTIME_STAGE' (FROM ... AS $RUNTIME_STAGE)"
    exit 1
fi
from_image="$(printf '%s\n' "$from_line" | awk '{ for (i = 2; i <= NF; i++) if ($i !~ /^--/) { print $i; exit } }')"
case "$from_image" in
    "$BASE_IMAGE"|"$BASE_IMAGE"@sha256:*) ;;
    *) fail "the runtime stage starts FROM '$from_image'; BASE lists the packages of $BASE_IMAGE only" ;;
esac

# Every word after `apt-get install` up to the end of that command (&&, ;, |), options
# left out.
runtime_packages="$(printf '%s\n' "$instructions" | awk '
    toupper($1) == "RUN" {
        for (i = 2; i <= NF; i++) {
            if ($i == "apt-get" && $(i + 1) == "install") {
                for (j = i + 2; j <= NF; j++) {
                    if ($j == "&&" || $j == ";" || $j == "|" || $j == "||") break
                    if ($j ~ /^-/) continue
                    print $j
                }
            }
        }
    }' | sort -u)"
if [ -z "$runtime_packages" ]; then
    echo "FAIL: no 'apt-get install' package list in the runtime stage of $dockerfile"
    exit 1
fi

echo "Dockerfile: $dockerfile"
echo "runtime stage: $from_line"
echo "runtime packages: $(echo $runtime_packages)"

# --- 2. Every listed package exists ----------------------------------------------------
# One apt-cache call (each one loads the whole cache); a name it does not know is absent
# from its output.
# shellcheck disable=SC2086
known=" $(apt-cache show --no-all-versions $runtime_packages 2>/dev/null \
    | awk '/^Package: / { printf "%s ", $2 }') "
for p in $runtime_packages; do
    case "$p" in
        *[!a-z0-9.+-]*) fail "'$p' in the runtime apt-get install is not a package name"; continue ;;
    esac
    case "$known" in
        *" $p "*) ;;
        *) fail "runtime package '$p' does not exist (apt-cache show $p)" ;;
    esac
done

# --- 3. What the binaries load ---------------------------------------------------------
declare -A lib_path=()      # soname -> resolved path
sets=()
for bin in "${binaries[@]}"; do
    [ -x "$bin" ] || { fail "$bin is not an executable file"; continue; }
    if ! out="$(ldd "$bin" 2>&1)"; then
        fail "ldd $bin failed: $out"
        continue
    fi
    names=""
    while IFS= read -r line; do
        line="${line#"${line%%[![:space:]]*}"}"
        [ -n "$line" ] || continue
        case "$line" in
            *"not a dynamic executable"*) fail "$bin is not dynamically linked"; continue ;;
            linux-vdso.so.*|linux-gate.so.*) continue ;;           # provided by the kernel
            *"=> not found"*) fail "$bin: ${line%% *} does not resolve on this machine"; continue ;;
            *" => "*) name="${line%% => *}"; path="${line#* => }"; path="${path%% (*}" ;;
            /*) path="${line%% (*}"; name="$(basename "$path")" ;;     # the dynamic loader
            *) fail "$bin: unexpected ldd line: $line"; continue ;;
        esac
        lib_path[$name]="$path"
        names="$names $name"
    done <<< "$out"
    sets+=("$(echo $names | tr ' ' '\n' | sort -u | tr '\n' ' ')")
done

if [ ${#sets[@]} -gt 1 ]; then
    same=1
    for s in "${sets[@]}"; do [ "$s" = "${sets[0]}" ] || same=0; done
    if [ $same = 1 ]; then
        echo "binaries ${binaries[*]} link the same ${#lib_path[@]} libraries"
    else
        echo "NOTE: the binaries link different libraries; the union is checked:"
        for i in "${!binaries[@]}"; do echo "  ${binaries[$i]}: ${sets[$i]}"; done
    fi
fi

# --- 4. Library -> package -> covered? -------------------------------------------------
# dpkg records each file under the path its package ships it at, which on a merged-/usr
# system may differ from the one the loader reports (/lib vs /usr/lib); try both, for the
# path and for the file a symlink points to.
candidates() {
    local p real
    real="$(readlink -f "$1" 2>/dev/null || echo "$1")"
    for p in "$1" "$real"; do
        echo "$p"
        case "$p" in
            /usr/lib/*|/usr/lib64/*) echo "${p#/usr}" ;;
            /lib/*|/lib64/*) echo "/usr$p" ;;
        esac
    done | awk '!seen[$0]++'
}

declare -A owner=()   # path -> package
all_candidates=()
for name in "${!lib_path[@]}"; do
    while IFS= read -r c; do all_candidates+=("$c"); done < <(candidates "${lib_path[$name]}")
done
if [ ${#all_candidates[@]} -gt 0 ]; then
    # One dpkg call for all of them; paths no package ships are simply absent from its output.
    while IFS= read -r line; do
        case "$line" in diversion*) continue ;; esac
        pkgs="${line%%: /*}"
        path="/${line#*: /}"
        pkg="${pkgs%%,*}"
        owner[$path]="${pkg%%:*}"        # drop the :amd64 qualifier
    done < <(dpkg-query -S "${all_candidates[@]}" 2>/dev/null || true)
fi

in_list() {
    local want="$1"; shift
    local p
    for p in "$@"; do [ "$p" = "$want" ] && return 0; done
    return 1
}

echo
printf '%-28s %-50s %-20s %s\n' "library" "file" "package" "provided by"
for name in $(printf '%s\n' "${!lib_path[@]}" | sort); do
    path="${lib_path[$name]}"
    pkg=""
    while IFS= read -r c; do
        if [ -n "${owner[$c]:-}" ]; then pkg="${owner[$c]}"; break; fi
    done < <(candidates "$path")
    if [ -z "$pkg" ]; then
        printf '%-28s %-50s %-20s %s\n' "$name" "$path" "?" "-"
        fail "$name ($path) belongs to no Debian package (dpkg -S); the image cannot be shown to have it"
        continue
    fi
    # shellcheck disable=SC2086
    if in_list "$pkg" $runtime_packages; then
        where="Dockerfile runtime list"
    elif in_list "$pkg" $BASE; then
        where="$BASE_IMAGE"
    else
        where="MISSING"
        fail "$name ($path) comes from package '$pkg', which is neither in the runtime stage's apt-get install nor in $BASE_IMAGE"
    fi
    printf '%-28s %-50s %-20s %s\n' "$name" "$path" "$pkg" "$where"
done

# --- 5. Nothing in the runtime list that idgate does not need -------------------------
used=" "
for name in "${!lib_path[@]}"; do
    while IFS= read -r c; do
        if [ -n "${owner[$c]:-}" ]; then used="$used${owner[$c]} "; break; fi
    done < <(candidates "${lib_path[$name]}")
done
for p in $runtime_packages; do
    case "$used" in *" $p "*) continue ;; esac
    # shellcheck disable=SC2086
    in_list "$p" $NON_LIBRARY_PACKAGES && continue
    fail "runtime package '$p' provides none of the libraries idgate loads; drop it, or add it with its reason to NON_LIBRARY_PACKAGES in $0"
done

echo
if [ $failures -gt 0 ]; then
    echo "runtime-libs: $failures problem(s)"
    exit 1
fi
echo "runtime-libs: every library the binary loads is in the runtime image"
