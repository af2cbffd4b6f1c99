#include "attn/io/file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <new>

#include "attn/error.h"

namespace attn::io {
namespace {

// A FileError for the errno the failing call left: read once, before anything else can change it.
[[noreturn]] void throw_file_error(const std::string& path, const char* what) {
  const int e = errno;
  throw FileError(path + ": " + what + " (" + std::strerror(e) + ")", e);
}

}  // namespace

namespace {
// fd's bytes from its offset to the end, or FormatError past max_bytes (a text file's cap) or past the size its header
// states; `path` names it in errors. The memory is reserved from the smaller of the file's size (a regular file's, only
// a first guess: it may grow or shrink while read) and the header's size once known, never from the file's size alone
// (a sparse file of terabytes had been a bad_alloc naming nothing before its first bytes were checked); memory that
// cannot be had is an AllocationError naming the path.
std::vector<uint8_t> read_descriptor(int fd, const std::string& path, size_t max_bytes,
                                     const SizeFromHeader& size_from_header) {
  struct stat st {};
  const bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
  const size_t file_size = regular && st.st_size > 0 ? static_cast<size_t>(st.st_size) : 0;
  std::vector<uint8_t> bytes;
  try {
    if (!size_from_header) bytes.reserve(std::min(file_size, max_bytes));
    size_t stated = kSizeUnknown;  // the size the header states, once it does
    uint8_t chunk[1 << 16];
    for (;;) {
      const ssize_t n = ::read(fd, chunk, sizeof chunk);
      if (n == 0) break;
      if (n < 0) {
        if (errno == EINTR) continue;
        throw_file_error(path, "read failed");
      }
      if (static_cast<size_t>(n) > max_bytes - bytes.size())
        throw FormatError(path + ": longer than the " + std::to_string(max_bytes) + " bytes a text file may have");
      bytes.insert(bytes.end(), chunk, chunk + n);
      if (size_from_header && stated == kSizeUnknown) {
        stated = size_from_header(bytes.data(), bytes.size());
        if (stated != kSizeUnknown) bytes.reserve(std::max(bytes.size(), std::min(file_size, stated)));
      }
      if (bytes.size() > stated)
        throw FormatError(path + ": longer than the " + std::to_string(stated) + " bytes its header accounts for" +
                          (regular ? "" : " (read no further: a stream that does not end?)"));
    }
  } catch (const std::bad_alloc&) {
    throw AllocationError(path + ": out of memory reading it (" + std::to_string(bytes.size()) + " bytes read, " +
                          (file_size ? std::to_string(file_size) + " in the file" : std::string("a stream")) + ")");
  }
  return bytes;
}

// The file's bytes to its end (read_descriptor).
std::vector<uint8_t> read_bytes(const std::string& path, size_t max_bytes, const SizeFromHeader& size_from_header) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw FileError(path + ": is a directory, not a file", EISDIR);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);  // a FIFO waits here for its writer, as with cat
  if (fd < 0) throw_file_error(path, "cannot open");
  struct Close {
    int fd;
    ~Close() { ::close(fd); }
  } close{fd};
  return read_descriptor(fd, path, max_bytes, size_from_header);
}
}  // namespace

std::vector<uint8_t> read_file(const std::string& path, const SizeFromHeader& size_from_header) {
  return read_bytes(path, SIZE_MAX, size_from_header);
}

void with_file_bytes(const std::string& path, const std::function<void(const uint8_t*, size_t)>& f,
                     const SizeFromHeader& size_from_header) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw FileError(path + ": is a directory, not a file", EISDIR);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_file_error(path, "cannot open");
  struct Close {
    int fd;
    ~Close() { ::close(fd); }
  } close{fd};
  struct stat st {};
  void* map = MAP_FAILED;
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0)
    map = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
  if (map == MAP_FAILED) {  // empty, a pipe, or no mapping: read from the descriptor already open (a named FIFO
                            // opened a second time had lost its writer's bytes, or waited for a writer forever)
    const std::vector<uint8_t> bytes = read_descriptor(fd, path, SIZE_MAX, size_from_header);
    f(bytes.data(), bytes.size());
    return;
  }
  struct Unmap {
    void* p;
    size_t n;
    ~Unmap() { ::munmap(p, n); }
  } unmap{map, static_cast<size_t>(st.st_size)};
  f(static_cast<const uint8_t*>(map), static_cast<size_t>(st.st_size));
}

std::string read_text(const std::string& path, size_t max_bytes) {
  const std::vector<uint8_t> bytes = read_bytes(path, max_bytes, {});
  return std::string(bytes.begin(), bytes.end());
}

std::string read_standard_input(size_t max_bytes) {
  const std::vector<uint8_t> bytes = read_descriptor(STDIN_FILENO, "standard input", max_bytes, {});
  return std::string(bytes.begin(), bytes.end());
}

std::string sibling_path(const std::string& path, const std::string& suffix) {
  const std::filesystem::path as_path(path);
  const std::string name = as_path.filename().string();
  if (name.size() <= 200) return path + suffix;
  // cut before a UTF-8 character that would not fit whole (a file system that checks names, such as ZFS with
  // utf8only or exFAT, refuses half a character), then tell names that share their first bytes apart by a hash of
  // the whole name (FNV-1a)
  size_t cut = 191;
  while (cut > 0 && (static_cast<unsigned char>(name[cut]) & 0xC0) == 0x80) --cut;
  uint32_t hash = 2166136261u;
  for (const char c : name) hash = (hash ^ static_cast<unsigned char>(c)) * 16777619u;
  char tag[10];
  std::snprintf(tag, sizeof tag, "-%08x", static_cast<unsigned>(hash));
  return (as_path.parent_path() / (name.substr(0, cut) + tag)).string() + suffix;
}

void write_file_atomically(const std::string& path, const std::vector<uint8_t>& bytes) {
  FileSet file;
  file.add("", path, bytes);
  file.commit();
}

namespace {
// What makes two output paths one: the same directory entry, i.e. the same name in the same directory, the directory
// known by its device and inode ("o.npy" and "./o.npy"; "linkdir/a.npy" and "realdir/a.npy", which lexical
// normalisation had taken for two; "sub/../x" where sub is a link, which it had taken for x). Two hard links are two
// entries: each rename replaces its own. Where the directory does not exist (the write fails later, naming it), its
// absolute path with the links of its existing part resolved.
std::string file_identity(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path as_path(path);
  const fs::path parent = as_path.parent_path().empty() ? fs::path(".") : as_path.parent_path();
  struct stat st;
  if (::stat(parent.c_str(), &st) == 0)
    return "entry " + as_path.filename().string() + " of directory " + std::to_string(st.st_dev) + ":" +
           std::to_string(st.st_ino);
  std::error_code ec;
  const fs::path absolute = fs::absolute(as_path, ec);
  fs::path resolved = fs::weakly_canonical(ec ? as_path : absolute, ec);
  if (ec) resolved = absolute.lexically_normal();
  return resolved.string();
}

std::string named(const std::string& role, const std::string& path) { return role.empty() ? path : role + " " + path; }

// Where an output named `path` is written: through symbolic links (a dangling one too) to the file they name, so the
// link is kept and its target replaced (the link itself had become a regular file).
std::string output_target(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path at = path;
  for (int hops = 0; hops < 40 && fs::is_symlink(at, ec); ++hops) {  // (40: the kernel's own limit)
    const fs::path to = fs::read_symlink(at, ec);
    if (ec) break;
    at = to.is_absolute() ? to : at.parent_path() / to;
  }
  return at.string();
}

// One more output beside those taken (identity of its target, role): not a directory, none of them; added to
// `taken`. Returns the path to write (output_target).
std::string take_output(const std::string& role, const std::string& given, OutputFolders folders,
                        std::vector<std::pair<std::string, std::string>>* taken) {
  if (given.empty()) {  // (a flag names itself; a library caller's empty path stays what open() makes of it)
    if (role.empty()) throw FileError("an empty path: no file to write", ENOENT);
    throw ArgumentError(role + ": an empty path; name the file to write");
  }
  const std::string path = output_target(given);
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw ArgumentError(named(role, given) + ": is a directory; an output needs a file name");
  // outputs are written beside their path and renamed over it: a FIFO, a device or a socket there (/dev/stdout) had
  // been replaced by a regular file
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
    throw ArgumentError(named(role, given) +
                        ": is not a regular file (a FIFO, a device or a socket); attn writes an output to a temporary "
                        "and renames it into place, so give a file name");
  if (folders == OutputFolders::kMustExist) {  // the temporary is made in the output's folder
    const std::filesystem::path parent = std::filesystem::path(path).parent_path();
    const std::string folder = parent.empty() ? std::string(".") : parent.string();
    struct stat fst;
    if (::stat(folder.c_str(), &fst) != 0) {
      const int err = errno;  // (ENOENT: missing; EACCES: a folder above it cannot be searched)
      throw ArgumentError(named(role, given) + ": its folder " + folder +
                          (err == ENOENT ? std::string(" does not exist (attn creates none)")
                                         : " cannot be examined (" + std::string(std::strerror(err)) + ")"));
    }
    if (!S_ISDIR(fst.st_mode)) throw ArgumentError(named(role, given) + ": " + folder + " is not a folder");
    if (::access(folder.c_str(), W_OK | X_OK) != 0) {
      const int err = errno;
      throw ArgumentError(named(role, given) + ": its folder " + folder + " is not writable (" + std::strerror(err) +
                          ")");
    }
  }
  std::string identity = file_identity(path);  // (two flags naming one file through a link are one file too)
  for (const auto& [other, other_role] : *taken)
    if (other == identity)
      throw ArgumentError(other_role + " and " + role + " both name " + path + ": give each its own file");
  taken->emplace_back(std::move(identity), role);
  return path;
}
}  // namespace

bool exists_or_unexaminable(const std::string& path) {
  std::error_code ec;
  return std::filesystem::exists(path, ec) || ec;
}

void check_output_paths(const std::vector<std::pair<std::string, std::string>>& outputs, OutputFolders folders) {
  std::vector<std::pair<std::string, std::string>> taken;
  for (const auto& [role, path] : outputs)
    if (!path.empty()) take_output(role, path, folders, &taken);
}

FileSet::~FileSet() {
  for (const Staged& f : files_)
    if (!f.temporary.empty()) std::remove(f.temporary.c_str());
}

void FileSet::add(const std::string& role, const std::string& given, const std::vector<uint8_t>& bytes) {
  // through symbolic links: the link kept (a missing folder fails as the temporary is made, a FileError naming it)
  const std::string path = take_output(role, given, OutputFolders::kMayBeCreated, &taken_);
  struct stat existing;  // a file replaced keeps its permissions (0600 had come back as 0666 less the umask)
  const bool replaces = ::stat(path.c_str(), &existing) == 0;
  // A temporary of its own (process id and a counter; O_EXCL: never one that exists, never through a symlink planted
  // there), so two threads writing the same path (Python's save_safetensors releases the GIL) cannot interleave in
  // one temporary; mode 0666 less the umask, as the file a plain open would create, or the replaced file's.
  static std::atomic<uint64_t> counter{0};
  int fd = -1;
  std::string temporary;
  for (int attempt = 0; fd < 0; ++attempt) {
    temporary = sibling_path(path, ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter.fetch_add(1)));
    fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && (errno != EEXIST || attempt >= 100)) throw_file_error(path, "cannot create its temporary");
  }
  files_.push_back({path, temporary});  // before the write: a half-written temporary is removed too
  if (replaces) (void)::fchmod(fd, existing.st_mode & 0777);  // (not a set-user-ID, set-group-ID or sticky bit)
  const uint8_t* p = bytes.data();
  for (size_t left = bytes.size(); left > 0;) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int e = n < 0 ? errno : EIO;
      ::close(fd);
      errno = e;
      throw_file_error(path, "write failed");
    }
    p += n, left -= static_cast<size_t>(n);
  }
  // on the disk before commit() renames it: a crash between the two had been able to leave an empty file at path
  // (the rename journaled, the data not yet written)
  if (::fdatasync(fd) != 0 && errno != EINVAL && errno != EROFS) {  // EINVAL: a file that cannot be synced (a FIFO...)
    const int e = errno;
    ::close(fd);
    errno = e;
    throw_file_error(path, "cannot write it to the disk (fdatasync)");
  }
  if (::close(fd) != 0) throw_file_error(path, "write failed");  // NFS and quotas report late, at close
}

void FileSet::commit() {
  for (Staged& f : files_) {
    if (std::rename(f.temporary.c_str(), f.path.c_str()) != 0)
      throw_file_error(f.path, "cannot rename the finished file into place");
    f.temporary.clear();  // renamed: nothing left to remove
  }
  // the renames themselves on the disk: each directory once (best effort: some file systems cannot sync one)
  std::vector<std::string> dirs;
  for (const Staged& f : files_) {
    const std::filesystem::path parent = std::filesystem::path(f.path).parent_path();
    const std::string dir = parent.empty() ? std::string(".") : parent.string();
    if (std::find(dirs.begin(), dirs.end(), dir) != dirs.end()) continue;
    dirs.push_back(dir);
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) ::fsync(fd), ::close(fd);
  }
  files_.clear();
  taken_.clear();
}

}  // namespace attn::io
