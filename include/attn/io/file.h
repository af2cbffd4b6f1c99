// attn/io/file.h: whole-file reads and atomic writes (what the readers and writers of attn use; public so tools and
// bindings write their files the same way). The binary reads have no size cap of their own (a model may be any size):
// the parsers check every size a header claims against the bytes read, and a stream is read no further than its header
// says (SizeFromHeader). Text reads stop at a cap (read_text).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace attn::io {

// A format's whole size as its header states it: called with the bytes read so far, it returns kSizeUnknown until they
// hold enough of the header to tell, then the size (or throws FormatError where the header is already wrong). The
// reads stop there: a stream longer than its header says (`--q /dev/zero`, a runaway pipe), which had been read until
// memory ran out, is a FormatError after at most one more chunk (64 KiB).
inline constexpr size_t kSizeUnknown = SIZE_MAX;
using SizeFromHeader = std::function<size_t(const uint8_t* data, size_t size)>;

// The file's bytes (to the end, for a pipe too); FileError (a FormatError) if it cannot be opened or read; with
// size_from_header, FormatError past the size it states.
std::vector<uint8_t> read_file(const std::string& path, const SizeFromHeader& size_from_header = {});
// Calls f(data, size) with the whole file mapped read-only (no copy: a model file's pages come straight from
// the page cache), or read into memory where it cannot be mapped (a pipe: read_file with size_from_header); FileError
// as read_file. A mapped file truncated by another process while f reads it ends the process with SIGBUS, as with any
// mapping.
void with_file_bytes(const std::string& path, const std::function<void(const uint8_t*, size_t)>& f,
                     const SizeFromHeader& size_from_header = {});
// The file as text (configs, vocabularies, training state); FileError as read_file. A text attn reads is small (a
// tokenizer.json of a large vocabulary, tens of MB): one longer than max_bytes is a FormatError naming the path, read
// no further, where `--model /dev/zero` or a runaway pipe had been read until memory ran out.
inline constexpr size_t kMaxTextFileBytes = size_t{1} << 28;  // 256 MiB
std::string read_text(const std::string& path, size_t max_bytes = kMaxTextFileBytes);
// The process's standard input as text, from where it stands to its end (read from descriptor 0: reopening /dev/stdin
// fails for a socket and starts a file over from its beginning); errors as read_text, naming "standard input".
std::string read_standard_input(size_t max_bytes = kMaxTextFileBytes);
// Writes `bytes` to a new temporary beside `path` (sibling_path(path, ".tmp-<pid>-<n>"), created exclusively) and
// renames it onto `path` (through symbolic links: onto the file they name, the link kept; a replaced file keeps its
// permissions); on failure removes the temporary and throws FileError, so `path` is either the complete new file or
// untouched. The bytes reach the disk (fdatasync) before the rename, and the rename before it returns (fsync of the
// directory): after a crash of the machine itself the path holds the old file or the new one, never an empty one.
void write_file_atomically(const std::string& path, const std::vector<uint8_t>& bytes);

// A name for a file beside `path` that stands for it while it is made: path + suffix (".partial"), or, where the file
// name is longer than 200 bytes, its first 191 bytes or fewer (whole UTF-8 characters), "-", 8 hex digits of a hash of
// the whole name, then the suffix (a name near NAME_MAX, 255 bytes, plus the suffix had been too long to create; two
// long names that begin alike get two names).
std::string sibling_path(const std::string& path, const std::string& suffix);

// Throws ArgumentError, naming the role (a flag such as "--weights") and the path, where an output path is an existing
// directory, FIFO, device or socket, or names the same file as another ("o.npy", "./o.npy", a link to o.npy and o.npy
// through a linked directory are one file: the same name in the same directory, known by its inode; a hard link is
// another name, replaced on its own).
// outputs: (role, path); empty paths are skipped. Commands call it before their work, so a bad path costs nothing.
// folders: whether each output's folder must already be a writable directory (a missing one had failed only when the
// output was written, after the work), or may be created by the caller before it writes (a checkpoint directory).
enum class OutputFolders { kMustExist, kMayBeCreated };
void check_output_paths(const std::vector<std::pair<std::string, std::string>>& outputs,
                        OutputFolders folders = OutputFolders::kMustExist);

// Whether `path` exists, one that cannot be examined (no permission, a link loop) counting as existing: reading it
// then fails naming it, where "absent" would skip an optional file's settings in silence (and std::filesystem's
// throwing exists() had let a filesystem_error escape).
bool exists_or_unexaminable(const std::string& path);

// Files that appear together or not at all (a checkpoint's files, an output and its weights). add() checks the path as
// check_output_paths does and writes the bytes to a temporary beside it; commit() renames every temporary into place
// once all are written. Destroyed without commit() (an exception on the way), it removes its temporaries, so a
// failed command leaves no new file behind. Only a failing rename inside commit() (after every write succeeded, onto
// paths checked not to be directories) can leave some files renamed and others not.
class FileSet {
 public:
  FileSet() = default;
  FileSet(const FileSet&) = delete;
  FileSet& operator=(const FileSet&) = delete;
  ~FileSet();
  // role: what the path is, for messages (a flag, or the file's name in a checkpoint)
  void add(const std::string& role, const std::string& path, const std::vector<uint8_t>& bytes);
  void commit();

 private:
  struct Staged {
    std::string path, temporary;
  };
  std::vector<Staged> files_;
  std::vector<std::pair<std::string, std::string>> taken_;  // (normal path, role) of files_, for add()'s checks
};

}  // namespace attn::io
