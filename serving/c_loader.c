/*
 * c_loader: run SavedModel signatures through TensorFlow's C API, the way a
 * C/C++ server (TF Serving's LoadSavedModel) does: load the MetaGraph and
 * its variables into a session, then TF_SessionRun on tensor names.
 *
 * Build against the TensorFlow wheel (no other dependency):
 *
 *   TF=$(python -c "import tensorflow, os; print(os.path.dirname(tensorflow.__file__))")
 *   gcc serving/c_loader.c -o c_loader -I$TF/include -L$TF \
 *       -l:libtensorflow_cc.so.2 -l:libtensorflow_framework.so.2 -Wl,-rpath,$TF
 *
 * Usage: c_loader JOBS_FILE [OP_LIBRARY.so ...]
 *
 * Every OP_LIBRARY (e.g. tensorflow_text/python/ops/_NAME.so) is loaded with
 * TF_LoadLibrary first, so in-graph tokenisation ops resolve.
 *
 * JOBS_FILE is whitespace-separated text; tokens in order:
 *
 *   model DIR                        load DIR (tag "serve"); later runs use it
 *   run LABEL                        start a run
 *   feed NAME:IDX DTYPE NDIMS D0 .. Dn-1 V0 V1 ...    one input tensor
 *   fetch NAME:IDX                   one output tensor
 *   go                               execute the run
 *
 * DTYPE is one of int32, int64, float, bool, string. Numbers are decimal;
 * a string value is written as 'x' followed by its bytes in hex, so the
 * empty string is "x". The feed/fetch names come from the SignatureDef.
 *
 * Output, one line each:
 *
 *   run LABEL ok
 *   out NAME:IDX DTYPE NDIMS D0 .. Dn-1 V0 V1 ...   (same value encoding)
 *
 * or, when loading or running fails (the process keeps going):
 *
 *   run LABEL error CODE MESSAGE     (CODE is a TF_Code, 3 = InvalidArgument)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tensorflow/c/c_api.h"
#include "tensorflow/c/tf_tstring.h"

#define MAX_IO 32
#define MAX_TOKEN 1048576

static char token[MAX_TOKEN];

static int next_token(FILE *f) { return fscanf(f, "%1048575s", token) == 1; }

static long next_long(FILE *f) {
  if (!next_token(f)) {
    fprintf(stderr, "c_loader: unexpected end of jobs file\n");
    exit(2);
  }
  return strtol(token, NULL, 10);
}

static TF_DataType parse_dtype(const char *name) {
  if (!strcmp(name, "int32")) return TF_INT32;
  if (!strcmp(name, "int64")) return TF_INT64;
  if (!strcmp(name, "float")) return TF_FLOAT;
  if (!strcmp(name, "bool")) return TF_BOOL;
  if (!strcmp(name, "string")) return TF_STRING;
  fprintf(stderr, "c_loader: unknown dtype %s\n", name);
  exit(2);
}

static const char *dtype_name(TF_DataType t) {
  switch (t) {
    case TF_INT32: return "int32";
    case TF_INT64: return "int64";
    case TF_FLOAT: return "float";
    case TF_BOOL: return "bool";
    case TF_STRING: return "string";
    default: return "unsupported";
  }
}

/* "x68690a" -> bytes; returns the length. */
static size_t unhex(const char *src, char *dst) {
  size_t n = strlen(src + 1) / 2;
  for (size_t i = 0; i < n; ++i) {
    unsigned int byte;
    sscanf(src + 1 + 2 * i, "%2x", &byte);
    dst[i] = (char)byte;
  }
  return n;
}

static TF_Output parse_output(TF_Graph *graph, const char *spec, int *ok) {
  char name[4096];
  int index = 0;
  const char *colon = strrchr(spec, ':');
  size_t len = colon ? (size_t)(colon - spec) : strlen(spec);
  memcpy(name, spec, len);
  name[len] = 0;
  if (colon) index = atoi(colon + 1);
  TF_Output out = {TF_GraphOperationByName(graph, name), index};
  *ok = out.oper != NULL;
  return out;
}

static TF_Tensor *read_tensor(FILE *f) {
  next_token(f);
  TF_DataType dtype = parse_dtype(token);
  int ndims = (int)next_long(f);
  int64_t dims[8];
  int64_t count = 1;
  for (int i = 0; i < ndims; ++i) {
    dims[i] = next_long(f);
    count *= dims[i];
  }
  size_t width = dtype == TF_STRING ? sizeof(TF_TString) : TF_DataTypeSize(dtype);
  TF_Tensor *t = TF_AllocateTensor(dtype, dims, ndims, width * (size_t)count);
  void *data = TF_TensorData(t);
  static char bytes[MAX_TOKEN];
  for (int64_t i = 0; i < count; ++i) {
    next_token(f);
    switch (dtype) {
      case TF_INT32: ((int32_t *)data)[i] = (int32_t)strtol(token, NULL, 10); break;
      case TF_INT64: ((int64_t *)data)[i] = strtoll(token, NULL, 10); break;
      case TF_FLOAT: ((float *)data)[i] = strtof(token, NULL); break;
      case TF_BOOL: ((unsigned char *)data)[i] = (unsigned char)atoi(token); break;
      case TF_STRING: {
        TF_TString *s = &((TF_TString *)data)[i];
        TF_StringInit(s);
        TF_StringCopy(s, bytes, unhex(token, bytes));
        break;
      }
      default: break;
    }
  }
  return t;
}

static void print_tensor(const char *name, TF_Tensor *t) {
  TF_DataType dtype = TF_TensorType(t);
  int ndims = TF_NumDims(t);
  int64_t count = 1;
  printf("out %s %s %d", name, dtype_name(dtype), ndims);
  for (int i = 0; i < ndims; ++i) {
    printf(" %lld", (long long)TF_Dim(t, i));
    count *= TF_Dim(t, i);
  }
  void *data = TF_TensorData(t);
  for (int64_t i = 0; i < count; ++i) {
    switch (dtype) {
      case TF_INT32: printf(" %d", ((int32_t *)data)[i]); break;
      case TF_INT64: printf(" %lld", (long long)((int64_t *)data)[i]); break;
      case TF_FLOAT: printf(" %.9g", ((float *)data)[i]); break;
      case TF_BOOL: printf(" %d", ((unsigned char *)data)[i]); break;
      case TF_STRING: {
        const TF_TString *s = &((const TF_TString *)data)[i];
        const unsigned char *p = (const unsigned char *)TF_StringGetDataPointer(s);
        size_t n = TF_StringGetSize(s);
        printf(" x");
        for (size_t j = 0; j < n; ++j) printf("%02x", p[j]);
        break;
      }
      default: printf(" ?"); break;
    }
  }
  printf("\n");
}

static void print_error(const char *label, TF_Status *status) {
  char message[4096];
  snprintf(message, sizeof message, "%s", TF_Message(status));
  for (char *c = message; *c; ++c)
    if (*c == '\n') *c = ' ';
  printf("run %s error %d %s\n", label, (int)TF_GetCode(status), message);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s JOBS_FILE [OP_LIBRARY.so ...]\n", argv[0]);
    return 2;
  }
  TF_Status *status = TF_NewStatus();
  for (int i = 2; i < argc; ++i) {
    TF_LoadLibrary(argv[i], status);
    if (TF_GetCode(status) != TF_OK) {
      fprintf(stderr, "c_loader: TF_LoadLibrary(%s): %s\n", argv[i], TF_Message(status));
      return 1;
    }
  }
  FILE *jobs = fopen(argv[1], "r");
  if (!jobs) {
    perror(argv[1]);
    return 2;
  }
  TF_Graph *graph = NULL;
  TF_Session *session = NULL;
  char label[256] = "";
  TF_Output inputs[MAX_IO], outputs[MAX_IO];
  TF_Tensor *values[MAX_IO];
  char fetch_names[MAX_IO][512];
  int n_in = 0, n_out = 0, bad_name = 0;
  while (next_token(jobs)) {
    if (!strcmp(token, "model")) {
      next_token(jobs);
      if (session) {
        TF_CloseSession(session, status);
        TF_DeleteSession(session, status);
        TF_DeleteGraph(graph);
      }
      graph = TF_NewGraph();
      TF_SessionOptions *options = TF_NewSessionOptions();
      const char *tags[] = {"serve"};
      session = TF_LoadSessionFromSavedModel(options, NULL, token, tags, 1, graph,
                                             NULL, status);
      TF_DeleteSessionOptions(options);
      if (TF_GetCode(status) != TF_OK) {
        print_error("load", status);
        return 1;
      }
      printf("model %s loaded\n", token);
    } else if (!strcmp(token, "run")) {
      next_token(jobs);
      snprintf(label, sizeof label, "%s", token);
      n_in = n_out = bad_name = 0;
    } else if (!strcmp(token, "feed")) {
      int ok;
      next_token(jobs);
      inputs[n_in] = parse_output(graph, token, &ok);
      bad_name |= !ok;
      values[n_in++] = read_tensor(jobs);
    } else if (!strcmp(token, "fetch")) {
      int ok;
      next_token(jobs);
      snprintf(fetch_names[n_out], sizeof fetch_names[n_out], "%s", token);
      outputs[n_out++] = parse_output(graph, token, &ok);
      bad_name |= !ok;
    } else if (!strcmp(token, "go")) {
      TF_Tensor *results[MAX_IO] = {0};
      if (bad_name) {
        printf("run %s error 5 a feed or fetch name is not in the graph\n", label);
      } else {
        TF_SessionRun(session, NULL, inputs, values, n_in, outputs, results, n_out,
                      NULL, 0, NULL, status);
        if (TF_GetCode(status) != TF_OK) {
          print_error(label, status);
        } else {
          printf("run %s ok\n", label);
          for (int i = 0; i < n_out; ++i) {
            print_tensor(fetch_names[i], results[i]);
            TF_DeleteTensor(results[i]);
          }
        }
      }
      for (int i = 0; i < n_in; ++i) TF_DeleteTensor(values[i]);
      n_in = n_out = 0;
      fflush(stdout);
    } else {
      fprintf(stderr, "c_loader: unexpected token %s\n", token);
      return 2;
    }
  }
  if (session) {
    TF_CloseSession(session, status);
    TF_DeleteSession(session, status);
    TF_DeleteGraph(graph);
  }
  TF_DeleteStatus(status);
  return 0;
}
