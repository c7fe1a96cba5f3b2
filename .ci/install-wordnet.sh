#!/usr/bin/env bash
# Install the WordNet 3.0 database for NLTK without internet access to the NLTK downloader.
#
# NLTK's METEOR (nltk.translate.meteor_score) needs the `wordnet` corpus. Its downloader
# fetches from GitHub, which CI machines and air-gapped boxes often cannot reach, but the
# Debian archive can be reached. Debian ships the same Princeton WordNet 3.0 files:
#
#   wordnet-base         data.*, index.{noun,verb,adj,adv}, *.exc, cntlist.rev
#   wordnet-sense-index  index.sense   (NLTK reads it while loading the corpus)
#
# NLTK's reader expects them in <nltk_data>/corpora/wordnet/ together with `lexnames`, a
# 45-line table Debian does not install as a data file. We write it below; its content is
# the standard WordNet 3.0 table from lexnames(5WN) (also shipped by wordnet-base as the man
# page /usr/share/man/man5/lexnames.5WN.gz), identical to WordNet-3.0/dict/lexnames.
#
# Target: ${NLTK_DATA:-$HOME/nltk_data}/corpora/wordnet (first entry if NLTK_DATA is a list).
# Idempotent: re-running only reports what is already in place (and repairs what is not).
# Usage:  .ci/install-wordnet.sh            (as root, or with sudo available)
set -euo pipefail

WORDNET_SRC=/usr/share/wordnet
NLTK_ROOT="${NLTK_DATA:-$HOME/nltk_data}"
NLTK_ROOT="${NLTK_ROOT%%:*}"            # NLTK_DATA may be a colon-separated search path
TARGET="$NLTK_ROOT/corpora/wordnet"

# Every file NLTK's WordNetCorpusReader may open (its _FILES list), except lexnames.
FILES=(
    cntlist.rev index.sense
    index.adj index.adv index.noun index.verb
    data.adj data.adv data.noun data.verb
    adj.exc adv.exc noun.exc verb.exc
)

say() { printf 'install-wordnet: %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        say "need root (or sudo) to run: $*" >&2
        exit 1
    fi
}

# 1. The Debian packages -------------------------------------------------------------------
if [ -f "$WORDNET_SRC/data.noun" ] && [ -f "$WORDNET_SRC/index.sense" ]; then
    say "Debian WordNet files already installed in $WORDNET_SRC"
else
    if ! command -v apt-get >/dev/null 2>&1; then
        say "apt-get not found: install WordNet 3.0 (wordnet-base, wordnet-sense-index) by hand" >&2
        exit 1
    fi
    say "installing Debian packages wordnet-base wordnet-sense-index"
    export DEBIAN_FRONTEND=noninteractive
    if ! as_root apt-get install -y --no-install-recommends wordnet-base wordnet-sense-index; then
        say "apt-get install failed; refreshing the package lists and retrying"
        as_root apt-get update
        as_root apt-get install -y --no-install-recommends wordnet-base wordnet-sense-index
    fi
fi

# 2. Copy the database files into NLTK's layout ----------------------------------------------
# Copies, not symlinks: NLTK >= 3.9 refuses to open a corpus file whose real path lies outside
# the corpus folder ("Security Violation ... escapes root"). About 35 MB.
copy_in() {  # copy_in SRC NAME: copy SRC to $TARGET/NAME unless an identical copy is there
    local src="$1" dst="$TARGET/$2"
    if [ -f "$dst" ] && [ ! -L "$dst" ] && cmp -s "$src" "$dst"; then
        say "  ok      $2"
    else
        rm -f "$dst"
        cp "$src" "$dst.tmp" && mv "$dst.tmp" "$dst"
        say "  copied  $2 <- $src"
    fi
}
mkdir -p "$TARGET"
say "target folder $TARGET"
for name in "${FILES[@]}"; do
    if [ ! -f "$WORDNET_SRC/$name" ]; then
        say "missing $WORDNET_SRC/$name (is the Debian package complete?)" >&2
        exit 1
    fi
    copy_in "$WORDNET_SRC/$name" "$name"
done
# NLTK's wordnet.license() reads LICENSE; the Debian copyright file carries the licence.
if [ -f /usr/share/doc/wordnet-base/copyright ]; then
    copy_in /usr/share/doc/wordnet-base/copyright LICENSE
fi

# 3. lexnames: the 45 lexicographer files of WordNet 3.0 (number, name, syntactic category
#    1=noun 2=verb 3=adjective 4=adverb), tab separated, as in lexnames(5WN). -------------
LEXNAMES="$(printf '%s\t%s\t%s\n' \
    00 adj.all 3            01 adj.pert 3           02 adv.all 4 \
    03 noun.Tops 1          04 noun.act 1           05 noun.animal 1 \
    06 noun.artifact 1      07 noun.attribute 1     08 noun.body 1 \
    09 noun.cognition 1     10 noun.communication 1 11 noun.event 1 \
    12 noun.feeling 1       13 noun.food 1          14 noun.group 1 \
    15 noun.location 1      16 noun.motive 1        17 noun.object 1 \
    18 noun.person 1        19 noun.phenomenon 1    20 noun.plant 1 \
    21 noun.possession 1    22 noun.process 1       23 noun.quantity 1 \
    24 noun.relation 1      25 noun.shape 1         26 noun.state 1 \
    27 noun.substance 1     28 noun.time 1          29 verb.body 2 \
    30 verb.change 2        31 verb.cognition 2     32 verb.communication 2 \
    33 verb.competition 2   34 verb.consumption 2   35 verb.contact 2 \
    36 verb.creation 2      37 verb.emotion 2       38 verb.motion 2 \
    39 verb.perception 2    40 verb.possession 2    41 verb.social 2 \
    42 verb.stative 2       43 verb.weather 2       44 adj.ppl 3)"
if [ -f "$TARGET/lexnames" ] && [ "$(cat "$TARGET/lexnames")" = "$LEXNAMES" ]; then
    say "  ok      lexnames"
else
    printf '%s\n' "$LEXNAMES" > "$TARGET/lexnames.tmp"
    mv "$TARGET/lexnames.tmp" "$TARGET/lexnames"
    say "  wrote   lexnames ($(wc -l < "$TARGET/lexnames") lines)"
fi

# 4. Check that NLTK can load it (skipped when Python/NLTK are not installed yet) ------------
PYTHON="${PYTHON:-python3}"
if command -v "$PYTHON" >/dev/null 2>&1 && "$PYTHON" -c "import nltk" 2>/dev/null; then
    NLTK_DATA="$NLTK_ROOT${NLTK_DATA:+:$NLTK_DATA}" "$PYTHON" - <<'EOF'
import warnings

from nltk.corpus import wordnet
from nltk.translate.meteor_score import meteor_score

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "multilingual functions are not available" (no OMW)
    dog = wordnet.synsets("dog")[0]
score = meteor_score([["a", "dog", "runs"]], ["a", "puppy", "runs"])
print(f"install-wordnet: NLTK sees WordNet {wordnet.get_version()}: {dog.name()} "
      f"({dog.lexname()}); meteor_score check = {score:.3f}")
EOF
else
    say "NLTK not importable with $PYTHON; skipped the load check"
fi
say "done"
