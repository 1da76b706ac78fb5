/* Run TVM-compiled PrimFuncs (an LLVM object file, e.g. cross-compiled for aarch64) without the TVM runtime.
 *
 * tests/test_tvm_aarch64.py writes `tvm_funcs.h` (the kernels' symbols) and links this driver statically with
 * the kernel object, then runs it under qemu-aarch64:
 *
 *   tvm_harness FUNC PATH:CODE:BITS:D0,D1,... [PATH:...]
 *
 * Each argument is a tensor in a raw little-endian file (DLPack type CODE 0 int / 1 uint / 2 float, BITS,
 * shape D0,D1,...); the function is called through its TVM-FFI packed ABI and every tensor is written back
 * (the outputs are the function's last arguments). The runtime calls the kernels make are provided here:
 * the parallel launch runs its tasks one after the other (3 tasks, so the work split is exercised), the
 * workspace is malloc'd (the kernels reach them through the `__TVMBackend*` pointers set in main).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { int32_t device_type, device_id; } DLDevice;
typedef struct { uint8_t code, bits; uint16_t lanes; } DLDataType;
typedef struct {
  void *data; DLDevice device; int32_t ndim; DLDataType dtype;
  int64_t *shape, *strides; uint64_t byte_offset;
} DLTensor;
typedef struct {
  int32_t type_index; uint32_t zero_padding;
  union { int64_t v_int64; double v_float64; void *v_ptr; } u;
} TVMFFIAny;
typedef int (*PackedFn)(void *self, const TVMFFIAny *args, int32_t num_args, TVMFFIAny *result);
typedef struct { void *sync_handle; int32_t num_task; } TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv *penv, void *cdata);

#include "tvm_funcs.h" /* extern int __tvm_ffi_NAME(...); static const struct {const char *name; PackedFn fn;} FUNCS[] */

enum { kTVMFFIDLTensorPtr = 7, N_TASKS = 3 };

int TVMBackendParallelLaunch(FTVMParallelLambda f, void *cdata, int num_task) {
  (void)num_task;
  TVMParallelGroupEnv env = {NULL, N_TASKS};
  for (int i = 0; i < N_TASKS; i++)
    if (f(i, &env, cdata) != 0) return -1;
  return 0;
}
int TVMBackendParallelBarrier(int task_id, TVMParallelGroupEnv *penv) { (void)task_id; (void)penv; return 0; }
void *TVMBackendAllocWorkspace(int dev_type, int dev_id, uint64_t nbytes, int code, int bits) {
  (void)dev_type; (void)dev_id; (void)code; (void)bits;
  return aligned_alloc(64, (nbytes + 63) / 64 * 64 + 64);
}
int TVMBackendFreeWorkspace(int dev_type, int dev_id, void *ptr) { (void)dev_type; (void)dev_id; free(ptr); return 0; }
void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t n) {
  fprintf(stderr, "%s:", kind);
  for (int i = 0; i < n; i++) fprintf(stderr, " %s", parts[i]);
  fprintf(stderr, "\n");
}
void TVMFFIErrorSetRaisedFromCStr(const char *kind, const char *msg) { fprintf(stderr, "%s: %s\n", kind, msg); }

/* function pointers the kernels call through (the TVM runtime fills them when it loads a library) */
extern void *__TVMBackendParallelLaunch, *__TVMBackendAllocWorkspace, *__TVMBackendFreeWorkspace;

int main(int argc, char **argv) {
  __TVMBackendParallelLaunch = (void *)TVMBackendParallelLaunch;
  __TVMBackendAllocWorkspace = (void *)TVMBackendAllocWorkspace;
  __TVMBackendFreeWorkspace = (void *)TVMBackendFreeWorkspace;
  if (argc < 3) { fprintf(stderr, "usage: %s FUNC PATH:CODE:BITS:SHAPE...\n", argv[0]); return 2; }
  PackedFn fn = NULL;
  for (size_t i = 0; i < sizeof(FUNCS) / sizeof(FUNCS[0]); i++)
    if (strcmp(FUNCS[i].name, argv[1]) == 0) fn = FUNCS[i].fn;
  if (!fn) { fprintf(stderr, "no function %s\n", argv[1]); return 2; }
  int n = argc - 2;
  DLTensor *t = calloc(n, sizeof(DLTensor));
  TVMFFIAny *args = calloc(n, sizeof(TVMFFIAny));
  char **paths = calloc(n, sizeof(char *));
  size_t *sizes = calloc(n, sizeof(size_t));
  for (int i = 0; i < n; i++) {
    char *spec = argv[i + 2];
    paths[i] = strtok(spec, ":");
    int code = atoi(strtok(NULL, ":")), bits = atoi(strtok(NULL, ":"));
    char *dims = strtok(NULL, ":");
    t[i].shape = calloc(8, sizeof(int64_t));
    size_t count = 1;
    for (char *d = strtok(dims, ","); d; d = strtok(NULL, ",")) { t[i].shape[t[i].ndim++] = atoll(d); count *= atoll(d); }
    sizes[i] = count * bits / 8;
    t[i].data = aligned_alloc(64, (sizes[i] + 63) / 64 * 64 + 64);
    FILE *f = fopen(paths[i], "rb");
    if (!f || fread(t[i].data, 1, sizes[i], f) != sizes[i]) { fprintf(stderr, "cannot read %s\n", paths[i]); return 2; }
    fclose(f);
    t[i].device.device_type = 1; /* kDLCPU */
    t[i].dtype.code = (uint8_t)code; t[i].dtype.bits = (uint8_t)bits; t[i].dtype.lanes = 1;
    args[i].type_index = kTVMFFIDLTensorPtr;
    args[i].u.v_ptr = &t[i];
  }
  TVMFFIAny result;
  memset(&result, 0, sizeof(result));
  int rc = fn(NULL, args, n, &result);
  if (rc != 0) { fprintf(stderr, "%s returned %d\n", argv[1], rc); return 1; }
  for (int i = 0; i < n; i++) {
    FILE *f = fopen(paths[i], "wb");
    fwrite(t[i].data, 1, sizes[i], f);
    fclose(f);
  }
  printf("ok %s\n", argv[1]);
  return 0;
}
