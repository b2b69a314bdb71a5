#!/usr/bin/env bash
# Lamina's images for the single-node cluster, built from the project's own Dockerfiles:
#   localhost/lamina-engine:local    Dockerfile.engine (CPU torch from the machine's wheel folder)
#   localhost/lamina-operator:local  Dockerfile.operator
#   localhost/redis:local            e2e/node/Containerfile.redis (the managed Redis, uid 999)
#   localhost/pause:local            the sandbox image: pause.c from the Kubernetes 1.20 sources
# Builder: Debian's buildah (vfs storage, chroot isolation: no daemon, no registry) over a base
# made from a `debootstrap --variant=minbase` bookworm root filesystem with python3.
# Output: docker-archive tarballs in $LAMINA_NODE_CACHE/images/, reused while their inputs (the
# Dockerfile and the files its context sends) are unchanged. Prints nothing on stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${LAMINA_NODE_CACHE:-$HOME/.cache/lamina/node}"
out="$cache/images"
mirror="${LAMINA_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
mkdir -p "$out"
# overlay: a layer commit is a diff (vfs copies the whole tree per layer: minutes with torch).
# LAMINA_BUILDAH_DRIVER=vfs where overlay mounts are not allowed.
export STORAGE_DRIVER="${LAMINA_BUILDAH_DRIVER:-overlay}" BUILDAH_ISOLATION=chroot
# buildah's own storage lives in the cache too: layers (torch) survive between runs.
store=(--root "$cache/buildah-$STORAGE_DRIVER/root" --runroot "$cache/buildah-$STORAGE_DRIVER/run")
log() { echo "[images] $*" >&2; }

# One build at a time per store: the clean-up below would remove the working containers of a
# build still running (it then fails with "identifier is not a container").
exec 9>"$cache/images.lock"
flock -n 9 || { log "another images.sh is building in $cache; waiting for it"; flock 9; }

# Working containers left by an interrupted build of ours hold gigabytes: drop them.
buildah "${store[@]}" rm --all >/dev/null 2>&1 || true

# --- base root filesystem (debootstrap, once) -------------------------------------------------
base_tar="$cache/rootfs-bookworm-python3.tar"
if [ ! -s "$base_tar" ]; then
    log "debootstrap bookworm minbase + python3 (about 2 minutes, once)"
    work="$(mktemp -d "$cache/rootfs.XXXXXX")"
    # python3-venv: the Dockerfiles make /opt/lamina with `python3 -m venv`; ca-certificates: pip
    # over https; passwd: groupadd/useradd for the image users.
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
        bookworm "$work/root" "$mirror" >"$cache/debootstrap.log" 2>&1 \
        || { tail -n 30 "$cache/debootstrap.log" >&2; rm -rf "$work"; exit 1; }
    rm -rf "$work/root/var/lib/apt/lists/"* "$work/root/var/cache/apt/"*.bin \
        "$work/root/var/cache/apt/archives/"*.deb "$work/root/usr/share/doc" "$work/root/usr/share/man"
    tar --numeric-owner -C "$work/root" -cf "$base_tar.tmp" .
    mv "$base_tar.tmp" "$base_tar"
    rm -rf "$work"
fi
base_image=localhost/lamina-base:bookworm
if ! buildah "${store[@]}" inspect --type image "$base_image" >/dev/null 2>&1; then
    log "base image $base_image"
    ctr="$(buildah "${store[@]}" from scratch)"
    buildah "${store[@]}" add "$ctr" "$base_tar" / >/dev/null
    # A base image sets PATH (Dockerfiles append to it with ENV PATH=...:$PATH).
    buildah "${store[@]}" config \
        --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd /bin/bash "$ctr"
    buildah "${store[@]}" commit --quiet --rm "$ctr" "$base_image" >/dev/null
fi

# --- the images -----------------------------------------------------------------------------
# The context is the committed tree (HEAD) by default, so another engineer's half-done edit in a
# shared checkout never lands in an image; the Dockerfiles themselves come from the working tree.
# LAMINA_NODE_WORKTREE=1 builds from the working tree as it is.
sources=(pyproject.toml README.md engine operator)
context_key() {  # what a build reads: the committed sources' ids, or the working files' hashes
    if [ -n "${LAMINA_NODE_WORKTREE:-}" ]; then
        (cd "$repo" && git ls-files -co --exclude-standard -- "${sources[@]}" \
            | grep -v '__pycache__' | sort | xargs -d '\n' sha256sum) | sha256sum | cut -c1-16
    else
        (cd "$repo" && git rev-parse "${sources[@]/#/HEAD:}") | sha256sum | cut -c1-16
    fi
}
make_context() {  # DIR: the repository's build context, committed or working
    mkdir -p "$1"
    if [ -n "${LAMINA_NODE_WORKTREE:-}" ]; then
        (cd "$repo" && git ls-files -co --exclude-standard -z -- "${sources[@]}" \
            | grep -zv '__pycache__' | xargs -0 cp --parents -t "$1")
    else
        (cd "$repo" && git archive HEAD -- "${sources[@]}") | tar -x -C "$1"
    fi
    cp "$repo"/Dockerfile.* "$1"/
}

build() {  # NAME DOCKERFILE [buildah bud args...]   (DOCKERFILE: repo-relative, or absolute)
    local name="$1" dockerfile="$2"
    shift 2
    local key tar ctx
    if [ "${dockerfile#/}" != "$dockerfile" ]; then
        key="$(sha256sum "$dockerfile" | cut -c1-16)"  # Containerfile.redis reads nothing else
    else
        key="$({ context_key; cat "$repo/$dockerfile" "$repo/$dockerfile.dockerignore"; } \
            | sha256sum | cut -c1-16)"
    fi
    tar="$out/$name-$key.tar"
    if [ -s "$tar" ]; then
        ln -sfn "$(basename "$tar")" "$out/$name.tar"
        return
    fi
    log "building localhost/$name:local from $dockerfile"
    local t0=$SECONDS
    ctx="$(mktemp -d "$cache/context.XXXXXX")"
    if [ "${dockerfile#/}" != "$dockerfile" ]; then
        cp "$dockerfile" "$ctx/"
        dockerfile="$(basename "$dockerfile")"
    else
        make_context "$ctx"
    fi
    buildah "${store[@]}" bud --quiet --layers -f "$ctx/$dockerfile" -t "localhost/$name:local" \
        --build-arg BASE_IMAGE="$base_image" "$@" "$ctx" >"$cache/build-$name.log" 2>&1 \
        || { tail -n 40 "$cache/build-$name.log" >&2; rm -rf "$ctx"; exit 1; }
    rm -rf "$ctx"
    rm -f "$out/$name"-*.tar
    buildah "${store[@]}" push --quiet "localhost/$name:local" \
        "docker-archive:$tar.tmp:localhost/$name:local" >/dev/null
    mv "$tar.tmp" "$tar"
    ln -sfn "$(basename "$tar")" "$out/$name.tar"
    log "built localhost/$name:local in $((SECONDS - t0)) s"
}

# pip inside the build sees the machine's wheel folders and local indexes (bind-mounted read-only)
# exactly as `make install` does, so torch is the local CPU wheel and nothing needs the network.
# The machine's pip settings come along too (its CA bundle: PyPI may sit behind a proxy with its
# own certificate authority; /etc/pip.conf names that bundle and a constraints file).
pip_args=()
for d in /opt/wheels /opt/pypi /opt/pypi-more /etc/xdg/pip /etc/pip.conf \
    /etc/ssl/certs/ca-certificates.crt; do
    [ -e "$d" ] && pip_args+=(-v "$d:$d:ro")
done
if [ -d /opt/wheels ]; then
    pip_args+=(--build-arg PIP_FIND_LINKS=/opt/wheels)
    # The CPU wheel is torch 2.13.0+cpu in /opt/wheels; PyPI's index only adds the CUDA build,
    # which the local version label outranks.
    pip_args+=(--build-arg TORCH_INDEX_URL=https://pypi.org/simple)
fi
extra=""
for d in /opt/pypi /opt/pypi-more; do
    [ -d "$d/simple" ] && extra="$extra file://$d/simple"
done
[ -n "$extra" ] && pip_args+=(--build-arg "PIP_EXTRA_INDEX_URL=${extra# }")

# The commit the images stand for: the node e2e installs the chart (CRDs) of this commit, so the
# CRDs and the operator inside the image always agree.
if [ -n "${LAMINA_NODE_WORKTREE:-}" ]; then echo worktree; else git -C "$repo" rev-parse HEAD; fi \
    >"$out/commit"
build lamina-operator Dockerfile.operator "${pip_args[@]}"
build lamina-engine Dockerfile.engine "${pip_args[@]}"
build redis "$here/Containerfile.redis"

# The sandbox image: one static binary, so no base and no Dockerfile.
pause_tar="$out/pause.tar"
pause_bin="$cache/bin/pause"
[ -x "$pause_bin" ] || { echo "images: $pause_bin is missing; run e2e/node/build_node.sh" >&2; exit 1; }
if [ ! -s "$pause_tar" ] || [ "$pause_bin" -nt "$pause_tar" ]; then
    ctr="$(buildah "${store[@]}" from scratch)"
    buildah "${store[@]}" copy "$ctr" "$pause_bin" /pause >/dev/null
    buildah "${store[@]}" config --entrypoint '["/pause"]' --cmd '' "$ctr"
    buildah "${store[@]}" commit --quiet --rm "$ctr" localhost/pause:local >/dev/null
    rm -f "$pause_tar.tmp"
    buildah "${store[@]}" push --quiet localhost/pause:local \
        "docker-archive:$pause_tar.tmp:localhost/pause:local" >/dev/null
    mv "$pause_tar.tmp" "$pause_tar"
fi
